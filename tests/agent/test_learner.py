"""The learning loop on the fake desktop (no display) with a tiny encoder: fast and real."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.fake import FakeDesktopEnv
from agent.gate import GateConfig, SafetyGate
from agent.learn_cli import LearnConfig, LearnRun
from agent.learner import Agent, AgentConfig, Learner
from trainer.ppo import PPOConfig

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


def tiny_agent(**kw) -> Agent:
    torch.manual_seed(0)
    np.random.seed(0)
    # no database here, so recall (on by default) would have nothing to recall from: off, as in a bare Learner
    cfg = dict(encoder=TINY, threads=1, rollout=64, ppo=PPOConfig(minibatch=32, epochs=2), memory=False)
    cfg.update(kw)
    return Agent(AgentConfig(**cfg))


def fake_env():
    return SafetyGate(FakeDesktopEnv("click", n_boxes=1, box=48), GateConfig(max_actions_per_s=1e6))


def test_learning_raises_success_and_trains_the_encoder():
    agent = tiny_agent()
    before = {k: v.clone() for k, v in agent.policy.encoder.state_dict().items()}
    learner = Learner(agent, fake_env(), ["fake-click"])
    outcomes = []
    learner.episode_callbacks.append(lambda r: outcomes.append(bool(r.success)))
    learner.run(1200)
    first, last = np.mean(outcomes[:100]), np.mean(outcomes[-100:])
    assert last > first + 0.3, (first, last)
    changed = [k for k, v in agent.policy.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert any("conv1" in k for k in changed) and any("transformer" in k for k in changed)


def test_resume_continues_counters_and_weights(tmp_path):
    cfg = LearnConfig(tasks="fake-click", steps=150, home=str(tmp_path), tensorboard=False, progress=False,
                      agent=AgentConfig(encoder=TINY, threads=1, rollout=64))
    run = LearnRun(cfg, ["fake-click"])
    run.start()
    run.loop()
    run.close()
    weights = {k: v.clone() for k, v in run.agent.policy.state_dict().items()}
    counters = run.learner.counters()
    cfg.resume, cfg.steps = True, 150
    run2 = LearnRun(cfg, ["fake-click"])
    run2.start()
    assert run2.learner.counters() == counters and counters["env_steps"] >= 150 and counters["updates"] >= 2
    for k, v in run2.agent.policy.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert run2.curve.state()["task_steps"] == run.curve.state()["task_steps"]
    run2.close()
    from memory.db import AgentDB

    with AgentDB.open(tmp_path) as db:  # every finished episode is in the database, with its steps
        eps = db.episodes()
        assert len(eps) == counters["episodes"] and all(e.steps == len(db.steps(e.id)) for e in eps[:5])
        assert db.steps(eps[0].id)[0].action["kind"] in ("click", "double_click", "right_click", "drag", "scroll_up",
                                                          "scroll_down", "key", "type", "done")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", "fake-click", "--steps", "100000", "--home", str(tmp_path),
           "--no-progress", "--no-tensorboard", "--agent.encoder", TINY, "--agent.threads", "1",
           "--agent.rollout", "32"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
        if (tmp_path / "tb").exists() or time.time() > deadline - 100:
            break
    time.sleep(3)  # let it act for a while
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    ckpts = list((tmp_path / "checkpoints").glob("ckpt-*.safetensors"))
    assert ckpts and int(ckpts[-1].stem.split("-")[1]) > 0


SWALLOWED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from squirrel import interrupt
from tests.agent.test_learner import fake_env, tiny_agent
from agent.learner import Learner

class Finalizer:  # a signal that arrives while a __del__ runs: the interrupt it raises is printed and dropped
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)

interrupt.install()
learner = Learner(tiny_agent(), fake_env(), ["fake-click"])
learner.decision_callbacks.append(lambda *_: Finalizer() if learner.env_steps == 40 else None)
try:
    learner.run(400)
except KeyboardInterrupt:
    print("stopped at", learner.env_steps)
"""


def test_a_stop_signal_swallowed_by_a_finalizer_still_stops_the_learner():
    root = str(Path(__file__).parents[2])
    p = subprocess.run([sys.executable, "-c", SWALLOWED.format(root=root)], capture_output=True, text=True, timeout=120,
                       cwd=root)
    assert "Exception ignored in" in p.stderr and "KeyboardInterrupt" in p.stderr, p.stderr[-2000:]  # it was lost
    assert p.stdout.strip().splitlines()[-1] == "stopped at 41", (p.stdout, p.stderr[-2000:])  # and still stopped, one step later


class AskEnv(SafetyGate):
    """The fake click task judged by a person: episodes that end by the agent's own doing end undecided
    (success None, no outcome reward); the true outcome is kept in `truth` for the test's "person"."""

    truth = None

    def reset(self, **kw):
        obs, info = super().reset(**kw)
        return obs, dict(info, ask_person=True)

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if term:
            self.truth = bool(info["success"])
            r -= 1.0 if self.truth else -1.0
            info = dict(info, success=None, ask_person=True)
        return obs, r, term, trunc, info


def test_person_judged_episodes_wait_then_are_learned_from():
    agent = tiny_agent()
    env = AskEnv(FakeDesktopEnv("click", n_boxes=1, box=48), GateConfig(max_actions_per_s=1e6))
    learner = Learner(agent, env, ["fake-click"])
    truths, outcomes = {}, []

    def on_episode(r):
        if r.success is None:  # held out of the rollout until judged
            assert r.episode in learner.pending and not any(s is t for s in r.transitions for t in learner.buffer)
            truths[r.episode] = env.truth
        else:
            outcomes.append(False)  # a timeout ends on its own: a failure, learned from at once

    def person(ob, out):  # verdicts arrive late, in the middle of later episodes
        if len(learner.pending) >= 3 or (learner.pending and np.random.rand() < 0.2):
            ep = next(iter(learner.pending))
            sil_before = len(learner.sil)
            r = learner.judge(ep, truths[ep])
            assert r is not None and r.success == truths[ep] and learner.judge(ep, True) is None
            outcomes.append(truths[ep])
            n = len(r.transitions)
            i = next(j for j, s in enumerate(learner.buffer) if s is r.transitions[0])
            assert all(a is b for a, b in zip(learner.buffer[i:i + n], r.transitions)) and (i + n - 1) in learner._finals
            assert r.transitions[-1].reward > 0.5 if truths[ep] else r.transitions[-1].reward < -0.5
            assert len(learner.sil) == sil_before + n * truths[ep] or len(learner.sil) == learner.sil.items.maxlen

    learner.episode_callbacks.append(on_episode)
    learner.decision_callbacks.append(person)
    learner.run(1200)
    assert len(outcomes) > 100 and learner.updates >= 15
    first, last = np.mean(outcomes[:80]), np.mean(outcomes[-80:])
    assert last > first + 0.3, (first, last)


def test_greedy_evaluations_are_on_the_curve_but_not_learned_from(tmp_path):
    import json

    cfg = LearnConfig(tasks="fake-click", steps=300, home=str(tmp_path), tensorboard=False, progress=False,
                      eval_every=100, eval_episodes=4, agent=AgentConfig(encoder=TINY, threads=1, rollout=64))
    run = LearnRun(cfg, ["fake-click"])
    run.start()
    seen = []
    evaluate = run.learner.evaluate

    def checked(task, n):
        before = (len(run.learner.buffer), run.learner.env_steps, run.learner.episodes, len(run.learner.sil))
        out = evaluate(task, n)
        assert (len(run.learner.buffer), run.learner.env_steps, run.learner.episodes, len(run.learner.sil)) == before
        seen.append(out)
        return out

    run.learner.evaluate = checked
    run.loop()
    run.close()
    res = json.loads((tmp_path / "curve.json").read_text())
    (r,) = res["runs"]
    assert len(r["eval_curve"]) == len(seen) >= 2 and all(0 <= v <= 1 for _, v in r["eval_curve"])
    assert [v for _, v in r["eval_curve"]] == [rate for rate, _ in seen]
    assert res["env_steps"] == run.learner.env_steps <= 300 + 20  # evaluation steps are not training steps
    assert res["eval_env_steps"] >= 4 * len(seen)


def test_with_memory_successes_are_recalled_and_the_policy_learns_to_trust_them(tmp_path):
    cfg = LearnConfig(tasks="fake-click", steps=640, home=str(tmp_path), tensorboard=False, progress=False,
                      agent=AgentConfig(encoder=TINY, threads=1, rollout=64, memory=True, affordance=False))
    run = LearnRun(cfg, ["fake-click"])
    run.start()
    recalled = []
    run.learner.episode_callbacks.append(
        lambda r: recalled.append(max(s.match.shape[0] - len(r.instruction.split()) for s in r.transitions)))
    run.loop()
    n_memory = len(run.agent.recall.memory)
    gain = float(run.agent.policy.recall_gain.detach())
    run.close()
    assert n_memory > 20 and max(recalled[-50:]) >= 1  # successes were written, and later decisions recalled them
    assert gain > 0.05, gain  # recalled targets were where success was: the policy came to trust them


def map_agent(seed: int, instruction: str, **kw):
    """Eight random screens with one instruction, and a tiny agent whose losses are only its maps' (no entropy,
    value or world-model terms)."""
    from agent.learner import ObsBatch

    frames = np.random.default_rng(seed).integers(0, 255, (8, 210, 160, 3), dtype=np.uint8)
    torch.manual_seed(0)
    agent = Agent(AgentConfig(encoder=TINY, threads=1, ppo=PPOConfig(ent_coef=0.0, vf_coef=0.0, wm_coef=0.0, lr=1e-3),
                              **kw))
    return ObsBatch(frames, [instruction] * 8), agent


def test_the_success_map_learns_from_failed_clicks_too_and_moves_the_point_logits():
    """With every advantage 0 (nothing for the policy gradient), clicks on one patch that failed and on another
    that succeeded still teach the success map, and the policy then points at the one that paid off."""
    from trainer.batches import PPOBatch
    from trainer.ppo import ppo_step

    obs, agent = map_agent(0, "Click the red box.", success_map=True, affordance=False)
    good, bad = 20, 60
    a = agent.act(obs)[0]
    a = a._replace(type=torch.zeros(8, dtype=torch.long), patch=torch.tensor([good, bad] * 4))
    with torch.no_grad():
        o0 = agent._forward(obs)[0]
    zero = torch.zeros(8)
    for _ in range(30):
        with torch.no_grad():
            ev = agent.evaluate(obs, a)
        batch = PPOBatch(obs, a, ev.logp, ev.value, zero, ev.value, ev.state, zero, zero,
                         outcome=torch.tensor([1.0, 0.0] * 4))
        out = ppo_step(agent, agent.world_model, agent.optimizer, batch, agent.cfg.ppo)
    assert out["success_map"] < 0.3
    with torch.no_grad():
        o1 = agent._forward(obs)[0]
    assert (o1.success[:, good] > 1.0).all() and (o1.success[:, bad] < -1.0).all()
    shift = lambda o: (o.patch_logits[:, good] - o.patch_logits[:, bad]).mean()  # noqa: E731
    assert shift(o1) > shift(o0) + 1.0, (shift(o0), shift(o1))


def test_pointer_actions_are_labelled_with_how_their_episode_ended():
    # every click of a success is a success; of a failure, only the last click (earlier ones may have been right)
    from agent.actions import ActionType
    from agent.learner import Step, pointer_outcomes
    from agent.policy import ActionBatch

    def step(kind, end=False, success=None):
        a = ActionBatch(*(torch.zeros(1, dtype=torch.long) for _ in ActionBatch._fields))._replace(
            type=torch.tensor([int(kind)]))
        return Step(np.zeros((2, 2, 3), np.uint8), "x", a, 0.0, 0.0, 0.0, end, False, torch.zeros(2), torch.zeros(2),
                    True, success=success)

    C, K = ActionType.CLICK, ActionType.KEY
    steps = [step(C), step(K), step(C, True, True), step(C), step(C, True, False), step(C, True, None),
             step(C), step(C), step(K, True, False), step(C)]
    assert pointer_outcomes(steps).tolist() == [1.0, -1.0, 1.0, -1.0, 0.0, -1.0, -1.0, 0.0, -1.0, -1.0]


def test_an_early_failure_is_learned_as_the_same_loss_as_running_out_of_steps():
    from agent.learner import failure_reward

    g, c, budget = 0.9, 0.01, 4

    def value(rewards):
        return sum(r * g ** t for t, r in enumerate(rewards))

    def failed_at(t, budget):  # what is learned when the task says "failed" at step t (the env's -c - 1 there)
        return failure_reward(-c - 1.0, True, {"success": False, "steps": t, "max_steps": budget}, g, c)

    timeout = value([-c, -c, -c, -c - 1.0])  # four steps, the last runs out of budget: the env's -1
    for t in (1, 2, 3):
        early = [-c] * (t - 1) + [failed_at(t, budget)]
        assert abs(value(early) - timeout) < 1e-9, t
        assert value([-c] * (t - 1) + [-c - 1.0]) < timeout  # the env's own rewards: failing early costs more
    assert failure_reward(1 - c, True, {"success": True, "steps": 1, "max_steps": budget}, g, c) == 1 - c
    assert failure_reward(-c, False, {"success": None, "steps": 1, "max_steps": budget}, g, c) == -c
    assert failure_reward(-c - 1.0, True, {"success": False}, g, c) == -c - 1.0  # no budget known: the env's reward
    # the loop learns from these rewards (the fake desktop: budget 3, DONE is a failure at once)
    for on in (True, False):
        agent = tiny_agent(failure_as_timeout=on, rollout=512, gamma=g)
        learner = Learner(agent, fake_env(), ["fake-click"])
        learner.run(400)  # "done" is ~3% of the first policy's types: a few failures at once in 120 steps, or none
        failed = [s.reward for s in learner.buffer if s.terminated and s.success is False]
        expect = {round(failed_at(t, 3), 9) for t in (1, 2, 3)} if on else {-c - 1.0}
        assert failed and {round(r, 9) for r in failed} <= expect, (on, set(failed))
        assert on == any(r > -c - 1.0 + 1e-6 for r in failed)


def test_outcome_replay_keeps_the_latest_labelled_pointer_actions():
    from agent.actions import ActionType
    from agent.learner import OutcomeReplay, Step
    from agent.policy import ActionBatch

    def step(kind, i, end=False, success=None):
        a = ActionBatch(*(torch.zeros(1, dtype=torch.long) for _ in ActionBatch._fields))._replace(
            type=torch.tensor([int(kind)]), patch=torch.tensor([i]))
        return Step(np.full((2, 2, 3), i, np.uint8), f"x{i}", a, 0.0, 0.0, 0.0, end, False, torch.zeros(2),
                    torch.zeros(2), True, success=success)

    C, K = ActionType.CLICK, ActionType.KEY
    r = OutcomeReplay(3)
    r.add_episode([step(C, 1), step(K, 2), step(C, 3, True, True)])
    r.add_episode([step(C, 4, True, None)])  # nobody knows how it ended: nothing to learn
    assert [(row[1], row[3]) for row in r.rows] == [("x1", 1.0), ("x3", 1.0)]
    assert r.sample(3) is None
    r.add_episode([step(C, 5), step(C, 6, True, False)])  # only the click that failed it is labelled
    r.add_episode([step(C, 7, True, False)])
    assert [(row[1], row[3]) for row in r.rows] == [("x3", 1.0), ("x6", 0.0), ("x7", 0.0)]  # the oldest went
    seen = set()
    for _ in range(30):
        b = r.sample(3)
        assert b.obs.frames.shape == (3, 2, 2, 3) and len(b.obs.instructions) == 3
        for f, ins, p, y in zip(b.obs.frames[:, 0, 0, 0], b.obs.instructions, b.actions.patch.tolist(),
                                b.outcome.tolist()):
            assert ins == f"x{f}" and p == f and y == (1.0 if f == 3 else 0.0)  # rows stay whole
            seen.add(int(f))
    assert seen == {3, 6, 7}


def test_replayed_outcomes_teach_the_success_map_when_the_rollout_has_none():
    """A rollout with no finished pointer action (every outcome unknown) still trains the map from replay."""
    from trainer.batches import MapBatch, PPOBatch
    from trainer.ppo import ppo_step

    obs, agent = map_agent(1, "Click the red box.", success_map=True, affordance=False)
    good, bad = 20, 60
    a = agent.act(obs)[0]._replace(type=torch.zeros(8, dtype=torch.long), patch=torch.tensor([good, bad] * 4))
    replay = MapBatch(obs, a, torch.tensor([1.0, 0.0] * 4))
    zero = torch.zeros(8)
    for i in range(30):
        with torch.no_grad():
            ev = agent.evaluate(obs, a)
        batch = PPOBatch(obs, a, ev.logp, ev.value, zero, ev.value, ev.state, zero, zero, outcome=-torch.ones(8))
        out = ppo_step(agent, agent.world_model, agent.optimizer, batch, agent.cfg.ppo)
        assert "success_map" not in out  # nothing labelled in the rollout itself
        out = ppo_step(agent, agent.world_model, agent.optimizer, batch, agent.cfg.ppo, replay=replay)
    assert out["success_map"] < 0.3
    with torch.no_grad():
        o = agent._forward(obs)[0]
    assert (o.success[:, good] > 1.0).all() and (o.success[:, bad] < -1.0).all()


def test_the_affordance_map_learns_where_pointing_changes_the_screen_and_moves_the_point_there():
    """No reward at all (advantages 0): clicks on one cell changed the screen, clicks on another did not; the
    affordance map learns which, from `changed` alone, and the policy then points at the cell that reacts."""
    from trainer.batches import PPOBatch
    from trainer.ppo import ppo_step

    obs, agent = map_agent(2, "Type in the City field.", affordance=True)
    live, dead = (20, 5), (60, 9)  # (patch, sub-cell)
    a = agent.act(obs)[0]
    a = a._replace(type=torch.zeros(8, dtype=torch.long), patch=torch.tensor([live[0], dead[0]] * 4),
                   sub=torch.tensor([live[1], dead[1]] * 4))
    with torch.no_grad():
        o0 = agent._forward(obs)[0]
    zero = torch.zeros(8)
    changed = torch.tensor([1.0, 0.0] * 4)
    for _ in range(30):
        with torch.no_grad():
            ev = agent.evaluate(obs, a)
        batch = PPOBatch(obs, a, ev.logp, ev.value, zero, ev.value, ev.state, changed, zero, pointer=torch.ones(8))
        out = ppo_step(agent, agent.world_model, agent.optimizer, batch, agent.cfg.ppo)
    assert out["affordance"] < 0.3
    with torch.no_grad():
        o1 = agent._forward(obs)[0]
    assert (o1.affordance[:, live[0], live[1]] > 1.0).all() and (o1.affordance[:, dead[0], dead[1]] < -1.0).all()
    point = lambda o, c: o.patch_logits[:, c[0]] + o.sub_logits[:, c[0]].log_softmax(-1)[:, c[1]]  # noqa: E731
    shift = lambda o: (point(o, live) - point(o, dead)).mean()  # noqa: E731
    assert shift(o1) > shift(o0) + 1.0, (shift(o0), shift(o1))


def test_the_learning_loop_feeds_the_maps_their_labels():
    """With the success map and the affordance map on, the loop's updates train both and the replay fills."""
    agent = tiny_agent(success_map=True, affordance=True)
    learner = Learner(agent, fake_env(), ["fake-click"])
    losses = []
    learner.update_callbacks.append(lambda info: losses.append(info))
    learner.run(200)
    assert len(losses) >= 2 and all("affordance" in x for x in losses) and any("success_map" in x for x in losses)
    assert len(learner.outcomes) > 0 and set(r[3] for r in learner.outcomes.rows) <= {0.0, 1.0}


def test_the_prior_entropy_bonus_pulls_the_action_type_toward_its_start_not_toward_uniform():
    from agent.actions import ActionType
    from agent.learner import ObsBatch

    frames = np.random.default_rng(0).integers(0, 255, (2, 210, 160, 3), dtype=np.uint8)
    ob = ObsBatch(frames, ['Type "maple" and press Enter.'] * 2)
    ends = {}
    for prior in (False, True):
        agent = tiny_agent(prior_entropy=prior)
        with torch.no_grad():
            o, _ = agent._forward(ob)
        logits = torch.zeros_like(o.type_logits, requires_grad=True)  # a policy that drifted to uniform types
        opt = torch.optim.SGD([logits], lr=1.0)
        for _ in range(200):  # the entropy bonus alone
            a = agent.policy.sample(o._replace(type_logits=logits.detach()))
            _, ent = agent.policy.log_prob_entropy(o._replace(type_logits=logits), a)
            opt.zero_grad()
            (-ent.mean()).backward()
            opt.step()
        ends[prior] = logits.detach().softmax(-1).mean(0)
    assert torch.allclose(ends[False], torch.full_like(ends[False], 1 / len(ends[False])), atol=1e-3)
    start = o.type_prior.softmax(-1).mean(0)  # clicks first, then typing and Enter, which the instruction names
    assert torch.allclose(ends[True], start, atol=0.02)
    assert ends[True][ActionType.CLICK] > ends[True][ActionType.TYPE] > ends[True][ActionType.SCROLL_UP]
    assert ends[True][ActionType.KEY] > ends[True][ActionType.DRAG]


def test_small_action_heads_start_every_seed_at_the_same_prior():
    from agent.learner import ObsBatch

    frames = np.random.default_rng(0).integers(0, 255, (2, 210, 160, 3), dtype=np.uint8)
    ob = ObsBatch(frames, ['Type "maple" and press Enter.'] * 2)

    def start(seed: int, small: bool) -> torch.Tensor:  # the first type and key logits of a new agent
        torch.manual_seed(seed)
        agent = Agent(AgentConfig(encoder=TINY, threads=1, small_heads=small))
        with torch.no_grad():
            o, _ = agent._forward(ob)
        return torch.cat([o.type_logits, o.key_logits], 1)

    assert (start(1, False) - start(2, False)).abs().max() > 0.5
    assert (start(1, True) - start(2, True)).abs().max() < 0.05
