"""What the policy knows of an instruction, computed once per instruction string and cached.

- its meaning: the MiniLM sentence embedding, and one embedding per instruction word (the mean of
  the MiniLM tokens inside the word), so the policy can point at words to type;
- its look: each word rendered as pixels in the desktop's font (DejaVu Sans, 11 px, as the
  playground and most X apps draw text), centred on a fixed canvas, so finding "the thing that says
  WORD" becomes matching the screen against the rendered word (DESIGN.md decision 5);
- two conventions of written instructions, read lexically: which words are in quotes (text to enter is
  quoted) and which words name a key ("press Enter"). The policy starts out favouring them when it types
  or presses a key, with gains it learns (agent/policy.py); nothing here knows any task.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import OrderedDict
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from agent.actions import KEYS, ActionType, words

MAX_WORDS = 24  # instruction words the policy sees (and can type)
WORD_H, WORD_W = 16, 80  # rendered word canvas, pixels
FONT_PX = 11
# Words that name a key of the action space (agent.actions.KEYS). Only unambiguous names: "up", "left", "end",
# "home" are more often ordinary words in an instruction than keys.
KEY_WORDS = {"enter": "Return", "return": "Return", "tab": "Tab", "escape": "Escape", "esc": "Escape",
             "backspace": "BackSpace", "delete": "Delete", "space": "space"}
# Verbs that name a pointer action other than a plain click ("Right-click X", "double click the file", "drag
# the slider"): the instruction's own word for how to act, as KEY_WORDS are for keys. "scroll" names both ways.
TYPE_WORDS = ((re.compile(r"\bdouble[- ]?click", re.I), (ActionType.DOUBLE_CLICK,)),
              (re.compile(r"\bright[- ]?click", re.I), (ActionType.RIGHT_CLICK,)),
              (re.compile(r"\bdrag(?:s|ging)?\b", re.I), (ActionType.DRAG,)),  # not "dragon"
              (re.compile(r"\bscroll(?:s|ing)?\b", re.I), (ActionType.SCROLL_UP, ActionType.SCROLL_DOWN)))
_QUOTED = re.compile(r'"[^"]+"|\u201c[^\u201d]+\u201d|(?<![\w])\'[^\']+\'(?![\w])')


class InstructionFeatures(NamedTuple):
    sentence: torch.Tensor  # (384,)
    words: torch.Tensor  # (K, 384), K = MAX_WORDS, zero rows past the end
    word_mask: torch.Tensor  # (K,) bool
    word_pixels: np.ndarray  # (K, WORD_H, WORD_W, 3) uint8: black text on white, centred
    word_widths: np.ndarray  # (K,) int: rendered width in pixels (0 past the end)
    quoted: torch.Tensor  # (K,) bool: the word is inside quotes
    key_named: torch.Tensor  # (K, len(KEYS)) bool: the word names that key
    type_named: torch.Tensor  # (len(ActionType),) bool: the instruction names that way of acting (TYPE_WORDS)


@lru_cache(maxsize=None)
def font(px: int = 11, bold: bool = False):
    """DejaVu Sans at `px` pixels (the font the playground's Qt apps use)."""
    from PIL import ImageFont

    name = "DejaVu Sans:bold" if bold else "DejaVu Sans"
    path = None
    if shutil.which("fc-match"):
        path = subprocess.run(["fc-match", "-f", "%{file}", name], capture_output=True, text=True).stdout.strip() or None
    fallback = "/usr/share/fonts/truetype/dejavu/DejaVuSans" + ("-Bold" if bold else "") + ".ttf"
    for candidate in (path, fallback, "DejaVuSans.ttf"):
        if candidate:
            try:
                return ImageFont.truetype(candidate, px)
            except OSError:
                continue
    return ImageFont.load_default(px)


def quoted_words(instruction: str, spans: list[tuple[int, int]]) -> list[bool]:
    """Per word span, whether it lies inside a quoted part of the instruction ("...", \u201c...\u201d or '...')."""
    regions = [m.span() for m in _QUOTED.finditer(instruction)]
    return [any(s <= a and b <= e for s, e in regions) for a, b in spans]


def type_names(instruction: str) -> np.ndarray:
    """(len(ActionType),) bool: the action types the instruction names (TYPE_WORDS)."""
    out = np.zeros(len(ActionType), bool)
    for pattern, types in TYPE_WORDS:
        if pattern.search(instruction):
            out[list(types)] = True
    return out


def key_names(instruction: str, spans: list[tuple[int, int]]) -> np.ndarray:
    """(len(spans), len(KEYS)) bool: which key each word names (KEY_WORDS, case-insensitive)."""
    out = np.zeros((len(spans), len(KEYS)), bool)
    for k, (a, b) in enumerate(spans):
        key = KEY_WORDS.get(instruction[a:b].lower())
        if key is not None:
            out[k, KEYS.index(key)] = True
    return out


def _font():
    return font(FONT_PX)


def render_word(word: str) -> tuple[np.ndarray, int]:
    """(WORD_H, WORD_W, 3) uint8 with `word` centred, and its width in pixels (clipped to the canvas)."""
    from PIL import Image, ImageDraw

    font = _font()
    w = min(int(np.ceil(font.getlength(word))), WORD_W)
    img = Image.new("RGB", (WORD_W, WORD_H), (255, 255, 255))
    ImageDraw.Draw(img).text(((WORD_W - w) // 2, 1), word, font=font, fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8), w


class InstructionCache:
    """instruction string -> InstructionFeatures, computed with the frozen MiniLM encoder."""

    def __init__(self, text_encoder=None, size: int = 4096):
        if text_encoder is None:
            from perception.text import InstructionEncoder

            text_encoder = InstructionEncoder()
        self.text, self.size = text_encoder, size
        self._cache: OrderedDict[str, InstructionFeatures] = OrderedDict()

    def __call__(self, instruction: str) -> InstructionFeatures:
        hit = self._cache.get(instruction)
        if hit is not None:
            self._cache.move_to_end(instruction)
            return hit
        feats = self._compute(instruction)
        self._cache[instruction] = feats
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return feats

    def _compute(self, instruction: str) -> InstructionFeatures:
        enc = self.text.encode(instruction)
        spans = words(instruction)[:MAX_WORDS]
        dim = enc.tokens.shape[1] if enc.tokens.ndim == 2 and len(enc.tokens) else 384
        wv = torch.zeros(MAX_WORDS, dim)
        mask = torch.zeros(MAX_WORDS, dtype=torch.bool)
        pixels = np.full((MAX_WORDS, WORD_H, WORD_W, 3), 255, np.uint8)
        widths = np.zeros(MAX_WORDS, np.int64)
        quoted = torch.zeros(MAX_WORDS, dtype=torch.bool)
        quoted[: len(spans)] = torch.tensor(quoted_words(instruction, spans), dtype=torch.bool)
        named = torch.zeros(MAX_WORDS, len(KEYS), dtype=torch.bool)
        named[: len(spans)] = torch.from_numpy(key_names(instruction, spans))
        for k, (a, b) in enumerate(spans):
            rows = [i for i, (s, e) in enumerate(enc.spans) if s < b and e > a]
            wv[k] = enc.tokens[rows].mean(0) if rows else enc.sentence
            mask[k] = True
            pixels[k], widths[k] = render_word(instruction[a:b])
        return InstructionFeatures(enc.sentence.clone(), wv, mask, pixels, widths, quoted, named,
                                   torch.from_numpy(type_names(instruction)))

    def batch(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Stacked features for a batch of instructions (what Policy.forward takes)."""
        fs = [self(s) for s in instructions]
        k = max(1, max(int(f.word_mask.sum()) for f in fs))  # trim the padding every row has
        return {
            "sentence": torch.stack([f.sentence for f in fs]),
            "words": torch.stack([f.words[:k] for f in fs]),
            "word_mask": torch.stack([f.word_mask[:k] for f in fs]),
            "word_pixels": torch.from_numpy(np.stack([f.word_pixels[:k] for f in fs])),
            "word_widths": torch.from_numpy(np.stack([f.word_widths[:k] for f in fs])),
            "quoted": torch.stack([f.quoted[:k] for f in fs]),
            "key_named": torch.stack([f.key_named[:k] for f in fs]),
            "type_named": torch.stack([f.type_named for f in fs]),
        }
