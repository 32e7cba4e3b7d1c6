"""Continual learning: a task stream with every task evaluated after each stage, replay balanced across tasks,
behaviour cloning on replayed successes, shrink-and-perturb, and the bench's metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.bench_continual import metrics
from agent.learn_cli import LearnConfig, LearnRun
from agent.learner import AgentConfig, SelfImitationBuffer, Step
from trainer.plasticity import ShrinkPerturb
from trainer.ppo import PPOConfig

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


def episode(task_id: int, n: int = 2) -> list[Step]:
    """n steps whose frames say which task (and episode) they came from."""
    from agent.policy import ActionBatch

    a = ActionBatch(*(torch.zeros(1, dtype=torch.long) for _ in ActionBatch._fields))
    frame = np.full((4, 4, 3), task_id, np.uint8)
    return [Step(frame, f"task {task_id}", a, 0.0, 0.0, 1.0 if i == n - 1 else 0.0, i == n - 1, False,
                 torch.zeros(4), torch.zeros(4), True) for i in range(n)]


def sampled_tasks(buf: SelfImitationBuffer, batches: int = 40) -> np.ndarray:
    return np.array([int(f[0, 0, 0]) for _ in range(batches) for f in buf.sample(10).obs.frames])


def test_balanced_replay_keeps_an_earlier_task_that_recent_replay_forgets():
    recent, balanced = SelfImitationBuffer(40, 0.9), SelfImitationBuffer(40, 0.9, balanced=True)
    for buf in (recent, balanced):
        for _ in range(10):
            buf.add_episode(episode(1), "a")  # 20 steps of task a
        for _ in range(100):
            buf.add_episode(episode(2), "b")  # then 200 steps of task b
        assert len(buf) == 40
    assert recent.task_counts() == {"b": 40}  # a new task pushed the old one's successes out
    assert balanced.task_counts() == {"a": 20, "b": 20}
    drawn = sampled_tasks(balanced)
    assert 0.35 < np.mean(drawn == 1) < 0.65  # replay batches contain the earlier task, evenly
    for _ in range(100):
        balanced.add_episode(episode(3), "c")
    assert balanced.task_counts() == {"a": 13, "b": 13, "c": 14}
    assert set(sampled_tasks(balanced)) == {1, 2, 3}


def test_replayed_returns_are_discounted_from_the_episode_end():
    buf = SelfImitationBuffer(10, 0.5, balanced=True)
    buf.add_episode(episode(1, n=3), "a")
    assert sorted(float(r[3]) for r in buf.queues["a"]) == [0.25, 0.5, 1.0]


def test_shrink_and_perturb_moves_matrices_towards_fresh_noise_and_leaves_vectors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    w0, b0, g0 = (p.detach().clone() for p in (net[0].weight, net[0].bias, net[1].weight))
    ShrinkPerturb([net], 0.0)()
    assert torch.equal(net[0].weight, w0)
    sp = ShrinkPerturb([net], 0.1)
    with torch.no_grad():
        net[0].weight.mul_(10)  # grown far past its initial scale
    big = net[0].weight.detach().clone()
    for _ in range(50):
        sp()
    assert torch.equal(net[0].bias, b0) and torch.equal(net[1].weight, g0)
    w = net[0].weight.detach()
    assert 0.8 * float(w0.std()) < float(w.std()) < 1.25 * float(w0.std())  # back to its initial scale, not 10x
    assert abs(float(torch.corrcoef(torch.stack([w.flatten(), big.flatten()]))[0, 1])) < 0.1  # fresh weights


def test_behaviour_cloning_keeps_replayed_actions_where_self_imitation_alone_would_not():
    from agent.learner import Agent, ObsBatch
    from trainer.batches import PPOBatch, SILBatch
    from trainer.ppo import ppo_step

    frames = np.random.default_rng(0).integers(0, 255, (4, 210, 160, 3), dtype=np.uint8)
    obs = ObsBatch(frames, ["Click the red box."] * 4)
    gains = {}
    for bc in (0.0, 1.0):
        torch.manual_seed(0)
        agent = Agent(AgentConfig(encoder=TINY, threads=1, ppo=PPOConfig(bc_coef=bc, ent_coef=0.0, vf_coef=0.0,
                                                                         wm_coef=0.0)))
        a, logp, value, state, *_ = agent.act(obs)
        zero = torch.zeros(4)
        ppo = PPOBatch(obs, a, logp.detach(), value.detach(), zero, value.detach(), state.detach(), zero, zero)
        sil = SILBatch(obs, a, value.detach() - 1.0)  # returns below the estimate: self-imitation's gap is 0
        outs = [ppo_step(agent, agent.world_model, agent.optimizer, ppo, agent.cfg.ppo, sil) for _ in range(5)]
        assert ("bc" in outs[0]) == (bc > 0)
        gains[bc] = float((agent.evaluate(obs, a).logp - logp).mean())
    assert gains[1.0] > gains[0.0] + 0.05, gains  # cloning raised the replayed actions' probability


@pytest.fixture
def stream_run(tmp_path):
    cfg = LearnConfig(tasks="fake-click,fake-type", home=str(tmp_path), tensorboard=False, progress=False,
                      stage_steps=150, eval_episodes=3, curve_every=50,
                      agent=AgentConfig(encoder=TINY, threads=1, rollout=64, replay="balanced"))
    return cfg


def test_a_task_stream_learns_each_task_in_turn_and_evaluates_all_after_every_stage(stream_run, tmp_path):
    cfg = stream_run
    run = LearnRun(cfg, ["fake-click", "fake-type"])
    run.start()
    seen = []
    run.learner.episode_callbacks.insert(0, lambda r: seen.append((r.task, r.env_steps)))
    run.loop()
    run.close()
    assert cfg.steps == 300 and run.learner.env_steps >= 300
    first_type = next(s for t, s in seen if t == "fake-type")
    assert all(t == "fake-click" for t, s in seen if s < 150) and first_type > 150  # in order, no interleaving
    assert all(t == "fake-type" for t, s in seen if s > first_type)
    res = json.loads((tmp_path / "curve.json").read_text())
    assert [s["task"] for s in res["stages"]] == ["fake-click", "fake-type"] and res["stage_steps"] == 150
    assert all(set(s["eval"]) == {"fake-click", "fake-type"} for s in res["stages"])  # every task, every stage
    assert 150 <= res["stages"][0]["env_steps"] < 160
    assert {r["task"] for r in res["runs"]} == {"fake-click", "fake-type"}


def test_a_stopped_stream_resumes_at_its_stage(stream_run, tmp_path):
    cfg = stream_run
    run = LearnRun(cfg, ["fake-click", "fake-type"])
    run.start()
    run.learner.episode_callbacks.append(lambda r: False if run.stages else None)  # stop right after stage 1
    run.loop()
    run.close()
    assert len(run.stages) == 1 and run.learner.env_steps < 300
    cfg.resume = True
    run2 = LearnRun(cfg, ["fake-click", "fake-type"])
    run2.start()
    assert run2.stages == run.stages and run2.learner.tasks == ["fake-type"]
    run2.loop()
    run2.close()
    assert [s["task"] for s in run2.stages] == ["fake-click", "fake-type"]


def test_continual_world_metrics_from_a_stream():
    tasks = ["a", "b", "c"]
    result = {"stage_steps": 100, "stages": [
        {"task": "a", "eval": {"a": 0.9, "b": 0.0, "c": 0.1}},
        {"task": "b", "eval": {"a": 0.6, "b": 0.8, "c": 0.1}},
        {"task": "c", "eval": {"a": 0.5, "b": 0.8, "c": 1.0}}],
        "runs": [{"task": "a", "curve": [[50, 0.2], [100, 0.6]]}, {"task": "b", "curve": [[50, 0.5], [100, 0.9]]},
                 {"task": "c", "curve": [[50, 0.8], [100, 1.0]]}]}
    ref = {"a": {"curve": [[50, 0.2], [100, 0.6]]}, "b": {"curve": [[50, 0.1], [100, 0.5]]}}
    m = metrics(tasks, result, ref)
    assert m["avg_final_success"] == pytest.approx((0.5 + 0.8 + 1.0) / 3)
    assert m["forgetting_per_task"] == pytest.approx({"a": 0.4, "b": 0.0})
    assert m["forgetting"] == pytest.approx(0.2)
    assert m["forward_transfer_per_task"]["a"] == pytest.approx(0.0)
    assert m["forward_transfer_per_task"]["b"] == pytest.approx((0.7 - 0.3) / 0.7)
    assert m["forward_transfer_per_task"]["c"] is None  # no reference run: left out of the mean
    assert m["forward_transfer"] == pytest.approx((0.7 - 0.3) / 0.7 / 2)
    assert m["steps_to_80"] == [None, 100, 50]
    assert metrics(tasks, dict(result, stages=result["stages"][:2]), ref) == {"stages_done": 2}


@pytest.mark.parametrize("args, says", [
    (["--tasks", "click-button,no-such-task"], "unknown playground task"),
    (["--variants", "bogus"], "unknown variant"),
    (["--tasks", "click-button"], "at least two"),
])
def test_bench_continual_refuses_bad_arguments_in_one_line(tmp_path, args, says):
    p = subprocess.run([sys.executable, "-m", "squirrel", "bench", "continual", "--json", str(tmp_path / "c.json"),
                        *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bench_continual_runs_variants_and_references_on_the_fake_desktop(tmp_path):
    out = tmp_path / "c.json"
    p = subprocess.run([sys.executable, "-m", "squirrel", "bench", "continual", "--tasks", "fake-click,fake-type",
                        "--steps-per-task", "100", "--curve-every", "50", "--eval-episodes", "2",
                        "--variants", "no-memory,finetune", "--json", str(out),
                        f"--squirrel-args=--agent.encoder {TINY} --agent.rollout 64"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["finished"] and res["tasks"] == ["fake-click", "fake-type"] and not res["errors"]
    assert set(res["reference_runs"]) == {"fake-click", "fake-type"}
    for v in ("no-memory", "finetune"):
        m = res["variants"][v]
        for key in ("avg_final_success", "forgetting", "forward_transfer", "steps_to_80", "decisions_per_success"):
            assert key in m, (v, key)
        assert len(m["success_matrix"]) == 2 and len(m["steps_to_80"]) == 2
