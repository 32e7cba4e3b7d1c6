"""Reading by matching: a rendered instruction word is found where it is shown, among other words."""

import numpy as np
import torch

from agent.instruction import WORD_H, WORD_W, render_word
from agent.reading import CELL, match_maps


def screen_with(words_at: dict[str, tuple[int, int]]) -> np.ndarray:
    frame = np.full((1, 210, 160, 3), 255, np.uint8)
    for word, (y, x) in words_at.items():
        px, _ = render_word(word)
        frame[0, y:y + WORD_H, x:x + WORD_W] = np.minimum(frame[0, y:y + WORD_H, x:x + WORD_W], px)
    return frame


def test_each_word_peaks_where_it_is_shown_and_masked_words_stay_off():
    places = {"harbor": (30, 10), "orbit": (90, 60), "lantern": (150, 20)}
    frame = screen_with(places)
    query = ["orbit", "harbor", "lantern", "unused"]
    px, widths = zip(*[render_word(w) for w in query])
    mask = np.array([[True, True, True, False]])
    maps = match_maps(frame, np.stack(px)[None], np.array(widths)[None], mask)
    assert maps.shape == (1, 4, 208 // CELL, 160 // CELL)
    for k, word in enumerate(query[:3]):
        y, x = places[word]
        cy, cx = divmod(int(maps[0, k].argmax()), maps.shape[-1])
        centre = ((y + WORD_H // 2) // CELL, (x + WORD_W // 2) // CELL)
        assert abs(cy - centre[0]) <= 1 and abs(cx - centre[1]) <= 1, (word, (cy, cx), centre)
        assert float(maps[0, k].max()) > 0.9
    assert float(maps[0, 3].max()) == -1.0  # a masked word matches nowhere
    again = match_maps(frame, np.stack(px)[None], np.array(widths)[None], mask)  # cached templates: same answer
    assert torch.equal(maps, again)


def test_words_at_the_left_and_top_edges_are_found_where_they_are_shown():
    # a left-aligned label's centre is nearer the edge than half the word canvas (WORD_W / 2 = 40 px)
    frame = np.full((1, 210, 160, 3), 255, np.uint8)
    places = {"Name": (0, 4), "harbor": (100, 2)}  # (top, left) of the ink
    for word, (y, x) in places.items():
        px, width = render_word(word)
        ink = px[:, (WORD_W - width) // 2 - 1:]  # the canvas from just before the word's ink
        frame[0, y:y + WORD_H, x:x + ink.shape[1]] = np.minimum(frame[0, y:y + WORD_H, x:x + ink.shape[1]], ink)
    px, widths = zip(*[render_word(w) for w in places])
    maps = match_maps(frame, np.stack(px)[None], np.array(widths)[None], np.array([[True, True]]))
    for k, (word, (y, x)) in enumerate(places.items()):
        cy, cx = divmod(int(maps[0, k].argmax()), maps.shape[-1])
        centre = ((y + WORD_H // 2) // CELL, (x + 1 + widths[k] // 2) // CELL)
        assert abs(cy - centre[0]) <= 1 and abs(cx - centre[1]) <= 1, (word, (cy, cx), centre)
        assert float(maps[0, k].max()) > 0.9, word


def test_matching_beside_the_encoder_gives_the_same_decision_as_after_it():
    from pathlib import Path

    from agent.learner import Agent, AgentConfig, ObsBatch

    torch.manual_seed(0)
    agent = Agent(AgentConfig(encoder=str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")))
    ob = ObsBatch(screen_with({"harbor": (30, 10), "orbit": (90, 60)}), ["Click the orbit button"])
    outs = []
    for concurrent in (True, False):
        agent.policy.concurrent_matching = concurrent
        _, _, value, _, _, out, match = agent.act(ob, greedy=True)
        outs.append((value, out.patch_logits, match[0]))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_the_learned_matcher_reads_the_encoders_own_stem_features_as_if_it_ran_the_stem_again():
    from agent.learner import Agent, AgentConfig, ObsBatch

    torch.manual_seed(0)
    agent = Agent(AgentConfig(threads=1, pretrained=""))  # the default encoder: a conv stem the matcher shares
    policy = agent.policy
    assert policy._shared_stem is not None
    frames = np.random.default_rng(0).integers(0, 256, (2, 210, 160, 3), dtype=np.uint8)
    ob = ObsBatch(frames, ["Click the orbit button", 'Type "harbor" and press Enter.'])

    def run():
        agent.optimizer.zero_grad()
        o, _ = agent._forward(ob)
        (o.sub_logits.sum() + o.value.sum()).backward()
        return o.sub_logits.detach(), torch.cat([p.grad.flatten() for p in policy.matcher.stem.parameters()])

    shared = run()
    policy._shared_stem = None  # run the stem on the screen a second time, as before
    again = run()
    assert torch.equal(shared[0], again[0])
    assert torch.allclose(shared[1], again[1], rtol=1e-4, atol=1e-6 * float(again[1].abs().max()))
