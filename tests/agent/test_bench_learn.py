"""`squirrel bench learn` and its baselines, on the display-free fake desktop."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agent.actions import KEYS, Action, ActionType
from agent.baselines import MultiDiscreteAction, run_random, run_sb3_ppo, sb3_env
from agent.bench_learn import steps_to_80, summarize
from agent.fake import FakeDesktopEnv

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "tests" / "fixtures" / "tiny-encoder.json")


def fake():
    return FakeDesktopEnv("click", n_boxes=1, box=48)


@pytest.fixture(scope="module")
def text_encoder():
    from perception.text import InstructionEncoder

    return InstructionEncoder()


def test_sb3_wrappers_pass_check_env(text_encoder):
    env = sb3_env(fake(), text_encoder)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"screen", "goal"} and obs["screen"].shape == (210, 160, 3) and obs["goal"].shape == (384,)
    assert obs["goal"].dtype == np.float32 and abs(np.linalg.norm(obs["goal"]) - 1) < 1e-4
    assert list(env.action_space.nvec) == [9, 40, 53, 40, 53, 20, 16, 4]


def test_multidiscrete_maps_cells_to_pixels_keys_and_spans():
    env = MultiDiscreteAction(fake())
    a = env.action([ActionType.DRAG, 0, 0, 39, 52, KEYS.index("Tab"), 15, 3])
    assert a["type"] == ActionType.DRAG
    assert a["point"].tolist() == [2, 2]  # cell * 4 + 2
    assert a["point2"].tolist() == [158, 209]  # 52 * 4 + 2 = 210, clipped to the 210-px window
    assert a["key"] == KEYS.index("Tab") and a["span"].tolist() == [15, 18]
    assert env.action([0, 10, 20, 0, 0, 0, 0, 0])["point"].tolist() == [42, 82]
    act = Action.from_gym(env.action([ActionType.KEY, 0, 0, 0, 0, KEYS.index("Return"), 2, 0]))
    assert act.type == ActionType.KEY and act.key == "Return" and act.span == (2, 2)
    env.action_space.seed(0)
    for _ in range(200):
        assert env.env.action_space.contains(env.action(env.action_space.sample()))
    # the fake's own checker: a click on the box's cell succeeds through the mapping
    env.reset(seed=3)
    _, bx, by = env.unwrapped.boxes[0]
    _, _, term, _, info = env.step([ActionType.CLICK, (bx + 24) // 4, (by + 24) // 4, 0, 0, 0, 0, 0])
    assert term and info["success"]


def test_random_agent_takes_exactly_the_budget_and_is_seeded():
    def episodes(seed):
        out = []
        assert run_random(fake(), 100, seed, lambda s, n: out.append((s, n))) == 100
        return out

    a, b = episodes(1), episodes(1)
    assert a == b and 30 <= len(a) and sum(n for _, n in a) <= 100
    assert all(s in (True, False, None) for s, _ in a)


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench's workers run (two threads on a busy 2-core box crawl)
    yield
    torch.set_num_threads(n)


def test_sb3_ppo_stops_at_the_budget_and_reports_episodes(text_encoder, one_thread):
    out = []
    assert run_sb3_ppo(fake(), 20, 0, lambda s, n: out.append((s, n)), n_steps=8, batch_size=4,
                       encoder=text_encoder) == 20  # two updates, then a stop mid-rollout
    assert out and sum(n for _, n in out) <= 20


def test_summary_and_steps_to_80():
    assert steps_to_80([[500, 0.2], [1000, 0.8], [1500, 0.9]]) == 1000 and steps_to_80([[500, 0.79]]) is None
    run = lambda agent, seed, s80: {"task": "t", "agent": agent, "seed": seed, "final_success": 0.9,  # noqa: E731
                                    "steps_to_80": s80, "curve": [[100, 0.5], [201, 0.9]], "minutes": 1.0,
                                    "steps_per_s": 10.0}
    runs = [run("squirrel", 0, 100), run("squirrel", 1, 300), run("sb3-ppo", 0, 1000), run("sb3-ppo", 1, None)]
    summary, ratio, lower = summarize(runs, ["t"], ["squirrel", "sb3-ppo"], 2000, 100)
    assert summary["t"]["squirrel"]["steps_to_80_mean"] == 200 and summary["t"]["squirrel"]["reached_80"] == 2
    assert summary["t"]["sb3-ppo"]["steps_to_80_mean"] is None  # a seed never reached 80%
    assert summary["t"]["squirrel"]["curve_mean"] == [[100, 0.5], [200, 0.9]]
    assert ratio == {"t": None} and lower == {"t": 1500 / 200}
    summary, ratio, _ = summarize(runs[:3], ["t"], ["squirrel", "sb3-ppo"], 2000, 100)
    assert ratio == {"t": 1000 / 200}


def bench(tmp_path, *args, **kw):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "squirrel", "bench", "learn", "--tasks", "fake-click", "--seeds", "1",
           "--parallel", "1", "--json", str(out), *args]
    return out, subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)


def test_bench_runs_all_three_agents_on_the_fake_task(tmp_path):
    out, r = bench(tmp_path, "--steps", "60", "--curve-every", "20", "--window", "10", "--sb3-n-steps", "16",
                   "--sb3-batch-size", "8", f"--squirrel-args=--agent.encoder {TINY} --agent.rollout 64",
                   timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["steps"] == 60 and d["seeds"] == 1 and d["tasks"] == ["fake-click"]
    assert d["agents"] == ["squirrel", "random", "sb3-ppo"] and len(d["runs"]) == 3
    for run in d["runs"]:
        assert {"task", "agent", "seed", "curve", "final_success", "steps_to_80"} <= set(run), run
        assert run["task"] == "fake-click" and run["seed"] == 0 and "error" not in run
        assert run["curve"] and all(len(p) == 2 and 0 <= p[1] <= 1 for p in run["curve"])
        assert run["curve"][-1][0] <= 60 and 0 <= run["final_success"] <= 1
    assert {r["agent"] for r in d["runs"]} == {"squirrel", "random", "sb3-ppo"}
    s = d["summary"]["fake-click"]
    assert set(s) == {"squirrel", "random", "sb3-ppo"} and "final_success_mean" in s["random"]
    assert "steps_to_80_mean" in s["sb3-ppo"] and "fake-click" in d["sb3_steps_ratio"]
    assert sum(line.startswith("[") and "final success" in line for line in r.stdout.splitlines()) == 3


def test_a_failed_run_is_reported_and_the_exit_code_is_not_zero(tmp_path):
    out, r = bench(tmp_path, "--agents", "squirrel", "--steps", "100", "--curve-every", "50",
                   "--squirrel-args=--no-such-option", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert run["agent"] == "squirrel" and run["final_success"] is None and "exit code" in run["error"]
    assert "FAILED" in r.stdout


def start_long_bench(tmp_path):
    out, work = tmp_path / "bench.json", tmp_path / "work"
    p = subprocess.Popen([sys.executable, "-m", "squirrel", "bench", "learn", "--tasks", "fake-click", "--agents",
                          "random", "--seeds", "2", "--steps", "1000000", "--json", str(out), "--workdir", str(work)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def children():
        return subprocess.run(["pgrep", "-f", f"agent.bench_learn --worker.*{work}"],
                              capture_output=True, text=True).stdout.split()

    deadline = time.time() + 60
    while len(children()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    return p, out, children


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopping_the_bench_stops_every_child(tmp_path, how):
    p, out, children = start_long_bench(tmp_path)
    try:
        assert len(children()) == 2
        time.sleep(1)
        p.send_signal(how)
        stdout, _ = p.communicate(timeout=60)
        deadline = time.time() + 20
        while children() and time.time() < deadline:  # SIGKILL: the children get SIGTERM from the kernel
            time.sleep(0.2)
        assert not children()
        if how == signal.SIGINT:
            assert p.returncode == 130, stdout
            assert json.loads(out.read_text())["finished"] is False
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(30)


def test_help_shows_the_field_docs():
    from squirrel.cli import main

    r = subprocess.run([sys.executable, "-c", "from squirrel.cli import main; main(['bench', 'learn', '--help'])"],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    for text in ("--steps", "Env steps per run", "--agents", "squirrel, random, sb3-ppo", "--parallel",
                 "--sb3-n-steps", "rollout length"):
        assert text in r.stdout, text
    assert main(["bench"]) == 2
