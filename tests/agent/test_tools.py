"""Tools as actions: offered to the policy when their first target is on the screen, run step by step through
the env as one decision, counted in the library's statistics, demoted when they keep failing, and a pruned
tool is never offered again."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actions import Action, ActionType, find_span
from agent.fake import COLOURS, FakeDesktopEnv
from agent.learner import Agent, AgentConfig, ObsBatch, execute
from agent.policy import TOOL, ActionBatch
from agent.tools import ToolSet, target_crop
from memory.db import AgentDB
from memory.tools import ToolLibrary, ToolStep

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
NOISE = ["Tab", "Escape", "Up", "Down", "Left", "Right", "Home", "End", "Delete"]  # random steps around a routine


@pytest.fixture
def db(tmp_path):
    d = AgentDB.open(tmp_path)
    yield d
    d.close()


def type_then_enter(lib: ToolLibrary, n: int = 8) -> int:
    """A "type the word, press Enter" tool from n successes (its span differs per episode: a parameter), each
    after a few random keys."""
    rng = np.random.default_rng(0)
    eps = [[ToolStep("key", key=str(k)) for k in rng.choice(NOISE, 2, replace=False)]
           + [ToolStep("type", span=(i % 2 + 1, i % 2 + 1)), ToolStep("key", key="Return")] for i in range(n)]
    (tid,) = lib.mine(eps)
    return tid


def box_frame(colour: str, x: int, y: int, size: int = 24) -> np.ndarray:
    f = np.full((210, 160, 3), 255, np.uint8)
    f[y:y + size, x:x + size] = COLOURS[colour]
    return f


def tool_call(slot: int, span: tuple[int, int]) -> ActionBatch:
    z = torch.zeros(1, dtype=torch.long)
    return ActionBatch(torch.tensor([TOOL]), z, z, z, z, z, torch.tensor([span[0]]), torch.tensor([span[1] - span[0]]),
                       torch.tensor([slot]))


def test_a_tool_call_runs_its_steps_as_one_decision_and_updates_the_statistics(db):
    lib = ToolLibrary(db, target_match="crop", auto_activate=3, demote_after=2)
    tid = type_then_enter(lib)
    agent = Agent(AgentConfig(encoder=TINY, threads=1, tools=True))
    agent.tools = ToolSet(lib)
    env = FakeDesktopEnv("type", max_steps=5)
    obs, _ = env.reset(seed=3)
    assert agent.tool_inputs(obs["screen"][None])[0].mask.tolist()[:2] == [True, False]  # one tool, offered
    span = find_span(obs["instruction"], env.word)
    _, reward, terminated, _, info, prims = execute(agent, env, obs, tool_call(0, span))
    assert [(a.type, a.span if a.type == ActionType.TYPE else a.key) for _, a, _ in prims] == \
        [(ActionType.TYPE, span), (ActionType.KEY, "Return")]  # both steps ran, the policy's span typed
    assert all(t == tid for *_, t in prims) and env.steps == 2  # two env steps, one decision
    assert terminated and info["success"] and reward == pytest.approx(-0.01 + 0.97 * 0.99)
    t = lib.get(tid)
    assert (t.calls, t.successes, t.status) == (1, 1, "active")
    obs, _ = env.reset(seed=3)  # the wrong word typed: the episode is lost, but the tool did its job
    *_, info, prims = execute(agent, env, obs, tool_call(0, (0, 0)))
    assert not info["success"] and len(prims) == 2
    t = lib.get(tid)
    assert (t.calls, t.successes, t.status) == (2, 2, "active")


class Boxes:
    """A screen that shows the red box until it is clicked, then nothing; never ends on its own."""

    def reset(self):
        self.frame = box_frame("red", 30, 40)
        return {"screen": self.frame.copy(), "instruction": "Click red then blue."}

    def step(self, action):
        self.frame = np.full_like(self.frame, 255)
        return {"screen": self.frame.copy(), "instruction": "Click red then blue."}, 0.0, False, False, {}


def test_a_tool_whose_target_is_missing_stops_fails_and_is_demoted_after_repeated_failures(db):
    lib = ToolLibrary(db, target_match="crop", auto_activate=3, demote_after=2)
    rng = np.random.default_rng(1)
    eps = []
    for _ in range(8):  # click the red box, then the blue one
        (x, y), (x2, y2) = rng.integers(0, 60, 2) + [0, 0], rng.integers(0, 60, 2) + [90, 120]
        f = box_frame("blue", int(x2), int(y2)) & box_frame("red", int(x), int(y))
        eps.append([ToolStep("key", key=str(k)) for k in rng.choice(NOISE, 2, replace=False)]
                   + [ToolStep("click", target=target_crop(f, int(x) + 12, int(y) + 12)),
                    ToolStep("click", target=target_crop(f, int(x2) + 12, int(y2) + 12))])
    (tid,) = lib.mine(eps)
    tools = ToolSet(lib)
    env = Boxes()
    for n in (1, 2):
        obs = env.reset()
        assert tools.inputs(obs["screen"]).mask[0]  # offered: its first target is on the screen
        clicked: list = []
        _, call = tools.call(0, env, obs, (0, 0), lambda o, a, r, clicked=clicked: clicked.append(a))
        assert len(clicked) == 1 and not call.ok and "step 2" in call.reason  # the blue box never appeared
        assert lib.get(tid).calls == n and lib.get(tid).successes == 0
    assert lib.get(tid).status == "candidate" and not tools.inputs(env.reset()["screen"]).mask.any()


def test_a_tool_target_is_found_by_appearance_wherever_it_is(db):
    lib = ToolLibrary(db, target_match="crop", auto_activate=3)
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(8):  # a few random keys, then click the red box (wherever it was, wherever on it), then Enter
        x, y = (int(v) for v in rng.integers(10, 120, 2))
        dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
        eps.append([ToolStep("key", key=str(k)) for k in rng.choice(NOISE, 2, replace=False)]
                   + [ToolStep("click", target=target_crop(box_frame("red", x, y), x + 12 + dx, y + 12 + dy)),
                      ToolStep("key", key="Return")])
    (tid,) = lib.mine(eps)
    tools = ToolSet(lib)
    assert [t.id for t in tools.tools] == [tid]
    red = box_frame("red", 100, 150)
    assert tools.inputs(red).mask[0] and not tools.inputs(box_frame("blue", 100, 150)).mask[0]
    a = tools.action(tools.tools[0], 0, red, (0, 0))
    assert a.type == ActionType.CLICK and 100 <= a.x < 124 and 150 <= a.y < 174  # on the box, at its new place
    assert tools.action(tools.tools[0], 0, box_frame("blue", 100, 150), (0, 0)) is None


def test_a_pruned_tool_is_never_chosen(db, tmp_path):
    lib = ToolLibrary(db, target_match="crop", auto_activate=3)
    tid = type_then_enter(lib)
    torch.manual_seed(0)
    agent = Agent(AgentConfig(encoder=TINY, threads=1, tools=True))
    agent.tools = ToolSet(lib)
    with torch.no_grad():
        agent.policy.tool_call.bias.fill_(30.0)  # a policy that calls a tool whenever one is offered
    env = FakeDesktopEnv("type")
    obs, _ = env.reset(seed=0)
    ob = ObsBatch(obs["screen"][None], [obs["instruction"]])
    assert all(int(agent.act(ob)[0].type[0]) == TOOL for _ in range(10))
    with AgentDB.open(tmp_path) as other:  # pruned from elsewhere (the panel has its own connection)
        ToolLibrary(other).prune(tid)
    chosen = [int(agent.act(ob)[0].type[0]) for _ in range(50)]
    assert TOOL not in chosen and agent.tools.tools == []
    assert lib.get(tid).calls == 0


def test_learning_with_tools_calls_them_and_records_their_steps(tmp_path):
    from agent.learn_cli import LearnConfig, LearnRun

    with AgentDB.open(tmp_path) as d:  # a tool already in this home's library (as the panel would approve one)
        tid = type_then_enter(ToolLibrary(d, target_match="crop", auto_activate=3))
    cfg = LearnConfig(tasks="fake-type", home=str(tmp_path), tensorboard=False, progress=False, steps=400,
                      mine_every=3, curve_every=100, agent=AgentConfig(encoder=TINY, threads=1, rollout=64, tools=True))
    run = LearnRun(cfg, ["fake-type"])
    run.start()
    assert [t.id for t in run.agent.tools.tools] == [tid]
    with torch.no_grad():
        run.agent.policy.tool_call.bias.fill_(3.0)  # calls it often, not always
    calls = []
    run.learner.episode_callbacks.insert(0, lambda r: calls.extend(st.prims for st in r.transitions if st.prims))
    run.loop()  # updates on rollouts with tool calls in them, mining every 3 successes
    run.close()
    assert run.learner.updates >= 3 and run.learner.decisions < run.learner.env_steps
    assert calls and all(1 <= len(p) <= 2 for p in calls)
    res = json.loads((tmp_path / "curve.json").read_text())["runs"][0]
    assert res["tool_calls_per_success"] > 0 and 1 <= res["decisions_per_success"] < 2
    with AgentDB.open(tmp_path) as d:
        t = ToolLibrary(d).get(tid)
        assert t.calls == len(calls) and 0 < t.successes <= t.calls
        tool_steps = [s for e in d.episodes() for s in d.steps(e.id) if s.action.get("tool") == tid]
        assert len(tool_steps) == sum(len(p) for p in calls) and {s.action["kind"] for s in tool_steps} <= {"type", "key"}


def test_only_points_that_did_something_are_kept_as_targets_to_mine(tmp_path):
    from agent.learn_cli import LearnConfig, LearnRun

    cfg = LearnConfig(tasks="fake-click", home=str(tmp_path), tensorboard=False, progress=False, steps=300,
                      mine_every=10_000, curve_every=100, agent=AgentConfig(encoder=TINY, threads=1, rollout=64, tools=True))
    run = LearnRun(cfg, ["fake-click"])
    run.start()
    episodes = []
    run.learner.episode_callbacks.append(lambda r: episodes.append(r) if r.success else None)
    run.loop()
    run.close()
    seen = {"missed": 0, "kept": 0}
    with AgentDB.open(tmp_path) as d:
        for r in episodes:
            steps = d.steps(r.db_id)
            assert len(steps) == len(r.transitions)
            for n, (st, s) in enumerate(zip(r.transitions, steps)):
                if "x" not in s.action:
                    continue
                did = st.changed or n == len(steps) - 1
                assert (s.target is not None) == did, (n, s.action)
                seen["kept" if did else "missed"] += 1
    assert seen["missed"] and seen["kept"]  # successes with a missed click on the way, and their real targets


class Pick:
    """A red, green or yellow box to pick, then the blue box: "click the named box, then Submit" in small."""

    def __init__(self, frame):
        self.frame, self.clicked = frame, []

    def step(self, action):
        self.clicked.append((action.type, action.x, action.y))
        return {"screen": self.frame.copy(), "instruction": "Pick green, then blue."}, 0.0, len(self.clicked) == 2, False, {}


def test_routines_that_differ_only_in_their_first_target_give_a_point_tool_the_policy_aims(db):
    lib = ToolLibrary(db, target_match="crop", auto_activate=3)
    rng = np.random.default_rng(2)
    eps = []
    for i in range(30):  # click the red, green or yellow box (one routine per colour), then the blue box
        (x, y), (x2, y2) = rng.integers(0, 60, 2), rng.integers(0, 60, 2) + [90, 120]
        f = box_frame("blue", int(x2), int(y2)) & box_frame(("red", "green", "yellow")[i % 3], int(x), int(y))
        eps.append([ToolStep("key", key=str(k)) for k in rng.choice(NOISE, 2, replace=False)]
                   + [ToolStep("click", target=target_crop(f, int(x) + 12, int(y) + 12)),
                      ToolStep("click", target=target_crop(f, int(x2) + 12, int(y2) + 12))])
    ids = lib.mine(eps)
    tools = [lib.get(t) for t in ids]
    point = [t for t in tools if t.params]
    assert len(tools) == 4 and len(point) == 1, [t.name for t in tools]  # one per colour, and the routine itself
    (pt,) = point
    assert [(p.kind, p.step) for p in pt.params] == [("point", 0)] and pt.steps[0].target is None
    assert pt.support == 30 and pt.name.startswith("click[point] → click[")
    ts = ToolSet(lib)
    slot = [t.id for t in ts.tools].index(pt.id)
    assert ts.tools[0].id == pt.id  # the most support first
    frame = box_frame("blue", 120, 170) & box_frame("green", 20, 30)
    inputs = ts.inputs(frame)
    assert inputs.mask[slot] and inputs.point.tolist().count(True) == 1 and inputs.point[slot]
    assert not ts.inputs(box_frame("green", 20, 30)).mask[slot]  # offered only where its next target is
    # the policy's point heads aim its first step: the green box (no routine started there), then the blue one
    agent = Agent(AgentConfig(encoder=TINY, threads=1, tools=True, memory=False))
    agent.tools = ts
    aim = agent.policy.from_action(Action(ActionType.CLICK, 30, 40))
    call = tool_call(slot, (0, 0))._replace(patch=torch.tensor([aim["patch"]]), sub=torch.tensor([aim["sub"]]))
    env = Pick(frame)
    execute(agent, env, {"screen": frame, "instruction": "Pick green, then blue."}, call)
    (t1, x1, y1), (t2, x2, y2) = env.clicked
    assert t1 == t2 == ActionType.CLICK and 20 <= x1 < 44 and 30 <= y1 < 54 and 120 <= x2 < 144 and 170 <= y2 < 194
    assert lib.get(pt.id).calls == 1 and lib.get(pt.id).successes == 1
    # its log-probability counts where it pointed; a tool with a target of its own does not
    ob = ObsBatch(frame[None], ["Pick green, then blue."], tools=[inputs])
    other = next(i for i in range(len(ts.tools)) if i != slot and inputs.mask[i])  # click[green-like] -> click[blue]
    elsewhere = call._replace(patch=call.patch + 1)
    with torch.no_grad():
        assert agent.evaluate(ob, call).logp != agent.evaluate(ob, elsewhere).logp
        c2 = call._replace(tool=torch.tensor([other]))
        assert agent.evaluate(ob, c2).logp == agent.evaluate(ob, c2._replace(patch=c2.patch + 1)).logp
