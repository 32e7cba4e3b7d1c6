"""Scale-out on a local Ray with real actor processes: episodes from every actor reach the learner, weights
reach every actor, and an actor killed mid-episode is restarted while the run goes on. Each test starts its
own Ray and stops it (LearnRun.close), and checks that no actor process or display outlives it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.distributed import ScaleConfig, alive, connect, descendants
from agent.learn_cli import LearnConfig, LearnRun
from agent.learner import AgentConfig
from squirrel.errors import UserError
from trainer.ppo import PPOConfig

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
pytestmark = pytest.mark.slow


def wait_gone(pids, timeout: float = 15.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def learn_config(tmp_path, tasks: str, actors: int = 2) -> LearnConfig:
    return LearnConfig(tasks=tasks, steps=1_000_000, home=str(tmp_path), tensorboard=False, progress=False,
                       checkpoint_every=10**9, curve_every=50, actors=actors, scale=ScaleConfig(object_store_mb=256),
                       agent=AgentConfig(encoder=TINY, threads=1, rollout=32, ppo=PPOConfig(minibatch=32, epochs=1)))


def run_with_a_kill(run: LearnRun, ready, budget_s: float) -> dict:
    """Learn; once `ready(stats)` holds, SIGKILL actor 0's process; stop when actor 0 is back with a new process,
    has acted with weights newer than the kill, and the learner has updated twice more."""
    seen: dict[int, set] = {0: set(), 1: set()}  # actor -> versions it acted with
    kill: dict = {}
    t0 = time.time()

    def on_episode(_r):
        L = run.learner
        for i, s in enumerate(L.stats):
            if s.episodes:
                seen[i].add(s.version)
        s0 = L.stats[0]
        if not kill and ready(L.stats):
            kill.update(pid=s0.pid, version=L.version, updates=L.updates, episodes=s0.episodes,
                        children=[p for p, _ in descendants(s0.pid)])
            os.kill(s0.pid, signal.SIGKILL)
        elif kill and s0.pid != kill["pid"] and s0.version > kill["version"] and L.updates >= kill["updates"] + 2:
            return False
        if time.time() - t0 > budget_s:
            return False

    run.start()
    run.learner.episode_callbacks.append(on_episode)
    try:
        run.loop()
        result = run.result()
    finally:
        run.close()
    return {"seen": seen, "kill": kill, "result": result, "stats": run.learner.stats}


def check_kill_survived(out: dict) -> None:
    seen, kill, stats = out["seen"], out["kill"], out["stats"]
    assert kill, "the actors never got ready for the kill"
    # episodes from both actors reached the learner, and weights reached both (their version advanced)
    assert stats[0].episodes > kill["episodes"] and stats[1].episodes > 0
    assert max(seen[0]) >= 2 and max(seen[1]) >= 2 and min(seen[0] | seen[1]) == 0, seen
    # the killed actor: restarted by Ray (a new process), its unfinished episode dropped, acting with new weights
    assert stats[0].restarts == 1 and stats[0].dropped == 1 and stats[0].pid != kill["pid"]
    assert stats[0].version > kill["version"] and stats[1].restarts == 0 and stats[1].dropped == 0
    assert not alive(kill["pid"])
    scale = out["result"]["scale"]
    assert [a["actor"] for a in scale["actors"]] == [0, 1] and all(a["alive"] for a in scale["actors"])
    assert scale["actors"][0]["restarts"] == 1 and scale["policy_lag"]["max"] >= 0 and scale["broadcast_mb"] > 0


def test_two_actors_feed_one_learner_and_survive_a_kill(tmp_path):
    import ray

    run = LearnRun(learn_config(tmp_path, "fake-click"), ["fake-click"])
    out = run_with_a_kill(run, lambda st: all(s.episodes >= 5 and s.version >= 2 for s in st), budget_s=200)
    check_kill_survived(out)
    assert not ray.is_initialized()
    # every episode that finished is in the learner's database; the learner's counters say the same
    from memory.db import AgentDB

    with AgentDB.open(tmp_path) as db:
        assert len(db.episodes()) == run.learner.episodes
    assert run.learner.episodes == sum(s.episodes for s in out["stats"])
    assert wait_gone([s.pid for s in out["stats"]]) == []


@pytest.mark.xvfb
def test_actors_on_real_displays_restart_with_a_fresh_desktop(tmp_path):
    """Each actor owns an Xvfb and the playground app; a killed actor's display and app are stopped (the
    watchdog), the restarted actor starts new ones, and nothing is left after the run."""
    run = LearnRun(learn_config(tmp_path, "click-button"), ["click-button"])
    out = run_with_a_kill(run, lambda st: all(s.episodes >= 2 and s.version >= 2 for s in st), budget_s=240)
    check_kill_survived(out)
    orphans = out["kill"]["children"]
    assert orphans, "the actor had no display or app processes"
    assert wait_gone(orphans) == [], "the killed actor's display/app outlived it"
    assert wait_gone([s.pid for s in out["stats"]]) == []


def test_an_unreachable_cluster_is_a_one_line_error():
    import ray

    t = time.time()
    with pytest.raises(UserError, match="no Ray cluster answers at 127.0.0.1:1"):
        connect("127.0.0.1:1", 1, ScaleConfig())
    with pytest.raises(UserError, match="expected HOST:PORT"):
        connect("nowhere", 1, ScaleConfig())
    assert time.time() - t < 10 and not ray.is_initialized()


def test_cli_learns_with_one_actor_and_refuses_a_bad_address(tmp_path):
    curve = tmp_path / "curve.json"
    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", "fake-click", "--steps", "48", "--home", str(tmp_path),
           "--no-progress", "--no-tensorboard", "--agent.encoder", TINY, "--agent.rollout", "16",
           "--agent.success-map", "--agent.affordance", "--agent.ppo.map-batch", "4",
           "--json", str(curve),
           "--actors", "1", "--scale.object-store-mb", "128"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    scale = json.loads(curve.read_text())["scale"]
    assert len(scale["actors"]) == 1 and scale["actors"][0]["steps"] > 0 and scale["version"] >= 2
    bad = subprocess.run(cmd[:-4] + ["--actors", "1", "--ray-address", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("squirrel: no Ray cluster answers at 127.0.0.1:1")


def test_actors_recall_from_the_learners_memory(tmp_path):
    """With recall on, successes the actors send are written to the learner's episodic memory, and the actors'
    lookups (one per episode, through the learner's MemoryService) bring those targets back to them."""
    cfg = learn_config(tmp_path, "fake-click")
    cfg.agent.memory = True
    run = LearnRun(cfg, ["fake-click"])
    t0 = time.time()
    run.start()
    run.learner.episode_callbacks.append(
        lambda _r: False if all(s.recalled >= 3 for s in run.learner.stats) or time.time() - t0 > 150 else None)
    try:
        run.loop()
        scale = run.result()["scale"]
    finally:
        run.close()
    assert all(a["recalled_episodes"] >= 3 for a in scale["actors"]), scale["actors"]
    assert scale["memory_lookups"] >= sum(a["episodes"] for a in scale["actors"]) // 2
    from memory.db import AgentDB
    from memory.episodic import EpisodicMemory

    with AgentDB.open(tmp_path) as db:
        assert len(EpisodicMemory(db, key_dim=384)) > 0


def test_bench_scale_smoke(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "squirrel", "bench", "scale", "--tasks", "fake-click", "--actors", "0,1", "--seconds", "3",
           "--agent.encoder", TINY, "--agent.rollout", "16", "--scale.object-store-mb", "128", "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    single, one = res["settings"]
    assert single["actors"] == 0 and one["actors"] == 1 and one["env_steps_per_s"] > 0 and one["updates_per_s"] > 0
    assert one["policy_lag"]["max"] >= 0 and one["broadcast_mb"] > 0
    assert res["limits"]["learner_max_steps_per_s"] > 0 and res["limits"]["broadcast_mb_per_version"] > 0


def test_sigterm_with_actors_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Ray's init replaces SIGTERM's handler with sys.exit; ours (checkpoint, then exit 0) must survive it."""
    import signal

    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", "fake-click", "--steps", "100000", "--home",
           str(tmp_path), "--no-progress", "--no-tensorboard", "--agent.encoder", TINY, "--agent.rollout", "16",
           "--curve-every", "16", "--actors", "1", "--scale.object-store-mb", "128"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "curve.json").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.5)
        assert (tmp_path / "curve.json").exists(), p.stderr.read() if p.poll() is not None else "no curve in time"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    assert "saving a checkpoint" in out and list((tmp_path / "checkpoints").glob("ckpt-*.safetensors"))
