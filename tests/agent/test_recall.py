"""Recall: a remembered target's appearance is found again on a new screen, for the same goal only."""

import numpy as np
import torch

from agent.recall import MAP_SHAPE, Recall, appearance_maps, crop
from agent.reading import CELL


def boxes(places: dict[tuple[int, int, int], tuple[int, int]]) -> np.ndarray:
    frame = np.full((210, 160, 3), 255, np.uint8)
    for colour, (y, x) in places.items():
        frame[y:y + 24, x:x + 24] = colour
    return frame


RED, BLUE = (220, 30, 30), (30, 30, 220)


def peak(m: torch.Tensor) -> tuple[int, int]:
    return divmod(int(m.argmax()), m.shape[-1])


def test_a_crop_is_found_where_its_colour_and_shape_are():
    first = boxes({RED: (20, 20), BLUE: (120, 100)})
    c = crop(first, 32, 32)  # the red box's centre
    later = boxes({RED: (150, 110), BLUE: (40, 30)})  # moved, and the blue one where the red was
    m = appearance_maps(later, c[None])
    assert m.shape == (1, *MAP_SHAPE) and float(m.max()) > 0.9
    cy, cx = peak(m[0])
    assert abs(cy - (150 + 12) // CELL) <= 1 and abs(cx - (110 + 12) // CELL) <= 1
    assert float(m[0, (40 + 12) // CELL, (30 + 12) // CELL]) < 0.2  # same shape, other colour: not it


def test_recall_remembers_successes_in_episodic_memory_by_goal(tmp_path):
    from memory.db import AgentDB
    from memory.episodic import EpisodicMemory

    rng = np.random.default_rng(0)
    red_goal, blue_goal = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    with AgentDB.open(tmp_path) as db:
        recall = Recall(EpisodicMemory(db, key_dim=8))
        screen = boxes({RED: (20, 20), BLUE: (120, 100)})
        assert recall.maps(screen[None], ["red"], red_goal[None])[0].shape[0] == 0  # nothing remembered yet
        recall.remember("t", red_goal, [(screen, 32, 32, {"type": "click", "x": 32, "y": 32, "step": 0})], 0.99)
        new = boxes({RED: (100, 40), BLUE: (20, 120)})
        (m,) = recall.maps(new[None], ["red"], red_goal[None])
        cy, cx = peak(m[0].float())  # (a box taller than the crop matches equally a few pixels up or down)
        assert m.shape == (1, *MAP_SHAPE) and abs(cy - (100 + 12) // CELL) <= 1 and abs(cx - (40 + 12) // CELL) <= 1
        (other,) = recall.maps(new[None], ["blue"], blue_goal[None])  # an unrelated goal recalls nothing
        assert other.shape[0] == 0 or float(other.float().max()) < 0.05
    with AgentDB.open(tmp_path) as db:  # it is in the database: a restarted agent remembers
        (m,) = Recall(EpisodicMemory(db, key_dim=8)).maps(new[None], ["red"], red_goal[None])
        assert float(m.float().max()) > 0.9


def test_a_repeated_goal_recalls_targets_that_differ_not_the_same_few(tmp_path):
    """Many targets at one key: the index returns the same oldest few every time. If the first 50 successes all
    hit red boxes, a later blue one must still be among the k recalled, and only the k chosen count as used."""
    from memory.db import AgentDB
    from memory.episodic import EpisodicMemory

    goal = np.random.default_rng(1).normal(size=8).astype(np.float32)
    with AgentDB.open(tmp_path) as db:
        memory = EpisodicMemory(db, key_dim=8)
        recall = Recall(memory, k=4)
        red, blue = boxes({RED: (20, 20)}), boxes({BLUE: (20, 20)})
        for i in range(60):  # one success at a time, as episodes end
            screen = blue if i == 50 else red
            recall.remember("t", goal, [(screen, 32, 32, {"type": "click", "x": 32, "y": 32, "step": 0})], 0.99)
        crops, w, feats = recall.lookup("same goal", goal)
        colours = {tuple(int(v) for v in c[8, 24]) for c in crops}
        assert len(crops) == 4 and colours == {RED, BLUE}, colours
        memory.query(goal[None], 4, count_uses=False)  # a query whose caller chooses counts no use
        memory._flush_uses()
        uses = dict(db.read("SELECT id, uses FROM memory"))
        assert sum(uses.values()) == 4 and max(uses.values()) == 1 and uses[51] == 1 and uses[60] == 1  # blue; newest


def test_recalled_targets_change_the_policy_output_by_the_learned_trust():
    """Memory enters the policy: a remembered target's map moves the point distribution there, as much as
    the learned recall gain says (0: no effect)."""
    from pathlib import Path

    from agent.learner import Agent, AgentConfig, ObsBatch

    torch.manual_seed(0)
    tiny = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
    agent = Agent(AgentConfig(encoder=tiny, threads=1, reading=False, memory=True))
    frame = boxes({RED: (20, 20), BLUE: (120, 100)})
    remembered = torch.zeros(1, *MAP_SHAPE, dtype=torch.float16)
    cy, cx = (120 + 12) // CELL, (100 + 12) // CELL
    remembered[0, cy, cx] = 1.0  # memory says: the blue box's centre
    with_memory = ObsBatch(frame[None], ["Click the box."], [remembered])
    without = ObsBatch(frame[None], ["Click the box."], [remembered[:0]])

    @torch.no_grad()
    def point_probs(obs):
        o, _ = agent._forward(obs)
        return torch.softmax(o.patch_logits[0], -1)

    assert torch.allclose(point_probs(with_memory), point_probs(without))  # gain 0: memory not trusted yet
    with torch.no_grad():
        agent.policy.recall_gain.fill_(8.0)
    p, base = point_probs(with_memory), point_probs(without)
    gw = agent.policy.grid[1]
    target_patch = (cy // (16 // CELL)) * gw + cx // (16 // CELL)  # 16-px patches, 4-px cells
    assert int(p.argmax()) == target_patch and float(p[target_patch]) > 5 * float(base[target_patch])
    a, *_ = agent.act(with_memory, greedy=True)
    action = agent.policy.to_action(a)
    assert abs(action.x - (100 + 12)) <= 8 and abs(action.y - (120 + 12)) <= 8


def test_recalled_neighbours_enter_the_policy_as_tokens_and_padding_rows_do_not_leak():
    """Retrieval tokens change the policy's output (its value and action type), and a batch row with fewer
    neighbours gives the same output as on its own."""
    from pathlib import Path

    from agent.learner import Agent, AgentConfig, ObsBatch
    from agent.recall import MEM_F, token_features

    torch.manual_seed(0)
    tiny = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
    agent = Agent(AgentConfig(encoder=tiny, threads=1, reading=False, memory=True))
    frame = boxes({RED: (20, 20), BLUE: (120, 100)})
    crops = np.stack([crop(frame, 32, 32), crop(frame, 112, 132)])
    feats = torch.from_numpy(token_features(crops, [{"type": "click", "step": 0}, {"type": "double_click", "step": 1}],
                                            np.array([0.9, 0.5], np.float32), np.array([1.0, 0.3], np.float32)))
    assert feats.shape == (2, MEM_F) and feats[0, 0] == 1 and feats[1, 1] == 1  # click, double-click

    @torch.no_grad()
    def out(memory):
        o, _ = agent._forward(ObsBatch(np.stack([frame] * len(memory)), ["Click the box."] * len(memory),
                                       memory=memory))
        return o

    none, some = out([feats[:0]]), out([feats])
    assert not torch.allclose(none.value, some.value, atol=1e-4)
    assert not torch.allclose(none.type_logits, some.type_logits, atol=1e-4)
    other = out([feats[1:]])
    assert not torch.allclose(other.value, some.value, atol=1e-4)  # which neighbours matters, not just how many
    both = out([feats, feats[:1]])  # rows of 2 and 1 neighbours, padded together
    assert torch.allclose(both.value[1], out([feats[:1]]).value[0], atol=1e-5)
    assert torch.allclose(both.value[0], some.value[0], atol=1e-5)
