"""The text prior (quotes and key names in an instruction, agent/instruction.py and agent/policy.py) and
goal-text shaping (agent/shaping.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actions import KEYS, ActionType, words
from agent.instruction import WORD_H, WORD_W, key_names, quoted_words, render_word, type_names
from agent.policy import SPAN_LENS, ActionBatch, quoted_runs
from agent.shaping import GoalText, ink_template, places

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


def test_quoted_words_and_key_names_are_read_from_the_instruction():
    s = 'Type "blue harbor" into the Notes field and press Enter, or Esc to quit.'
    sp = words(s)
    assert [s[a:b] for (a, b), q in zip(sp, quoted_words(s, sp)) if q] == ["blue", "harbor"]
    named = key_names(s, sp)
    assert {(s[a:b], KEYS[int(k)]) for (a, b), row in zip(sp, named) for k in row.nonzero()[0]} == \
        {("Enter", "Return"), ("Esc", "Escape")}
    curly = "Enter \u201cnorth\u201d, then it's done"  # typographic quotes count; an apostrophe does not
    sp = words(curly)
    assert [curly[a:b] for (a, b), q in zip(sp, quoted_words(curly, sp)) if q] == ["north"]
    plain = "Click the Up button"  # "up" is not read as a key: too often an ordinary word
    assert not key_names(plain, words(plain)).any() and not any(quoted_words(plain, words(plain)))


def test_quoted_runs_mark_each_run_at_its_start_and_length():
    q = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    r = quoted_runs(q)
    assert r.shape == (2, 6, SPAN_LENS)
    assert {tuple(x) for x in r[0].nonzero().tolist()} == {(1, 1), (4, 0)}  # "w1 w2" from 1, "w4" from 4
    assert r[1].sum() == 0  # a run of 5 words is longer than any span the policy can type: no prior


def _agent(**kw):
    from agent.learner import Agent, AgentConfig

    torch.manual_seed(0)
    return Agent(AgentConfig(encoder=TINY, threads=1, pretrained="", **kw))


def test_the_prior_favours_the_quoted_span_and_the_named_key_and_its_gains_can_switch_it_off():
    from agent.learner import ObsBatch

    agent = _agent()
    s = 'Type "orbit" and press Enter.'
    ob = ObsBatch(np.full((1, 210, 160, 3), 255, np.uint8), [s])
    start = [s[a:b] for a, b in words(s)].index("orbit")

    def probs():
        with torch.no_grad():
            o, _ = agent._forward(ob)
            typed = ActionBatch(*[torch.tensor([v]) for v in (ActionType.TYPE, 0, 0, 0, 0, 0, start, 0, 0)])
            key = ActionBatch(*[torch.tensor([v]) for v in (ActionType.KEY, 0, 0, 0, 0, KEYS.index("Return"), 0, 0, 0)])
            return [float(agent.policy.log_prob_entropy(o, a)[0].exp()) for a in (typed, key)]

    with_prior = probs()
    with torch.no_grad():
        for g in (agent.policy.quote_gain, agent.policy.key_name_gain, agent.policy.type_prior_gain):
            g.zero_()
    without = probs()
    assert with_prior[0] > 20 * without[0] and with_prior[1] > 5 * without[1], (with_prior, without)
    assert with_prior[0] > 0.05 and with_prior[1] > 0.05


def test_an_instruction_that_names_how_to_point_lifts_that_action_type():
    named = lambda s: {ActionType(int(t)).name for t in type_names(s).nonzero()[0]}
    assert named("Right-click harbor and choose Rename.") == {"RIGHT_CLICK"}
    assert named("double click the file, then drag it to Trash") == {"DOUBLE_CLICK", "DRAG"}
    assert named("Scroll to the end") == {"SCROLL_UP", "SCROLL_DOWN"}
    assert not named("Click the Copy button.") and not named("Choose the right colour.")  # "right" alone is not
    assert not named("Choose dragon and click Submit.")  # a radio option, not "drag"

    from agent.learner import ObsBatch

    agent = _agent()
    screen = np.full((1, 210, 160, 3), 255, np.uint8)

    def types(s):
        with torch.no_grad():
            return agent._forward(ObsBatch(screen, [s]))[0].type_logits.softmax(-1)[0]

    right, plain = types("Right-click harbor and choose Rename."), types("Click harbor and choose Rename.")
    assert right[ActionType.RIGHT_CLICK] > 1.8 * plain[ActionType.RIGHT_CLICK], (right, plain)
    assert right[ActionType.CLICK] > 0.2  # the menu entry after it is still a click
    with torch.no_grad():
        agent.policy.type_prior_gain.zero_()
    off = types("Right-click harbor and choose Rename.")
    assert abs(float(off[ActionType.RIGHT_CLICK] - plain[ActionType.RIGHT_CLICK])) < 0.05  # the gain is the prior's


def _screen(words_at: dict[str, list[tuple[int, int]]]) -> np.ndarray:
    frame = np.full((160, 240, 3), 255, np.uint8)
    for word, at in words_at.items():
        px, _ = render_word(word)
        for y, x in at:
            frame[y:y + WORD_H, x:x + WORD_W] = np.minimum(frame[y:y + WORD_H, x:x + WORD_W], px)
    return frame


def test_places_counts_where_a_word_is_shown_and_not_other_words():
    t = ink_template(render_word("harbor")[0])
    assert t.shape[0] < WORD_H and t.shape[1] < WORD_W  # cropped to the ink
    assert places(_screen({"harbor": [(10, 10), (90, 120)], "lantern": [(50, 40)]}), t) == 2
    assert places(_screen({"lantern": [(50, 40)], "orbit": [(100, 10)]}), t) == 0


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_shaping_rewards_the_quoted_text_appearing_and_takes_it_back_at_the_end(gamma):
    agent = _agent()
    goal = GoalText(agent.instructions, coef=0.5, gamma=gamma)
    header = {"Type": [(5, 5)], "harbor": [(5, 60)]}  # the instruction shows the phrase once from the start
    goal.start(_screen(header), 'Type "harbor" and press Enter.')
    wrong = goal.shape(_screen(dict(header, lantern=[(80, 40)])), ended=False)  # typed another word
    right = goal.shape(_screen(dict(header, harbor=[(5, 60), (80, 40)])), ended=False)  # typed the phrase
    same = goal.shape(_screen(dict(header, harbor=[(5, 60), (80, 40)])), ended=False)
    end = goal.shape(_screen(header), ended=True)
    assert wrong == 0.0 and right == pytest.approx(0.5 * gamma) and same == pytest.approx(0.5 * gamma - 0.5)
    assert end == pytest.approx(-0.5)
    total = sum(gamma ** i * f for i, f in enumerate([wrong, right, same, end]))
    assert total == pytest.approx(0.0, abs=1e-6)  # potential-based: the discounted sum over an episode is phi(s0) = 0
    goal.start(_screen({"Click": [(5, 5)]}), "Click the harbor button")  # no quotes: nothing to shape
    assert goal.shape(_screen({"harbor": [(80, 40)]}), ended=False) == 0.0
