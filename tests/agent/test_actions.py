import numpy as np
import pytest

from agent.actions import KEYS, Action, ActionType, action_space, find_span, span_text, words


def test_words_and_spans():
    ins = 'Type "tiger" in the Name field and press Enter.'
    assert [ins[a:b] for a, b in words(ins)][:4] == ["Type", "tiger", "in", "the"]
    assert span_text(ins, find_span(ins, "tiger")) == "tiger"
    assert span_text(ins, find_span(ins, "Name field")) == "Name field"
    assert span_text(ins, (3, 2)) is None and span_text(ins, (0, 99)) is None
    with pytest.raises(ValueError):
        find_span(ins, "lion")


def test_gym_round_trip():
    space = action_space(160, 210)
    space.seed(0)
    for _ in range(200):
        s = space.sample()
        a = Action.from_gym(s)
        assert space.contains(a.to_gym())
        b = Action.from_gym(a.to_gym())
        assert b == a
    a = Action(ActionType.KEY, key="ctrl+v")
    assert Action.from_gym(a.to_gym()).key == "ctrl+v" and KEYS.index("ctrl+v") == a.to_gym()["key"]
    assert Action.from_dict(Action(ActionType.DRAG, 1, 2, 3, 4).to_dict()) == Action(ActionType.DRAG, 1, 2, 3, 4)
    assert np.asarray(a.to_gym()["point"]).dtype == np.int64
