"""`squirrel bench scale`: env steps/s and learner updates/s with 1 and 2 Ray actors on this machine (and the
single-process loop beside them), the policy lag in versions, and what limits scaling further: the
learner's own throughput and the size of a weight broadcast."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from agent.distributed import ScaleConfig
from agent.learner import AgentConfig
from squirrel.errors import UserError


@dataclass
class BenchScaleConfig:
    """Measure learning with N actors on Ray (each with its own virtual display) against the single-process loop."""

    json: str = ""
    """Write the results here (JSON)."""
    tasks: str = "click-button,click-shape,enter-text"
    """Comma-separated tasks (real playground tasks by default)."""
    actors: str = "0,1,2"
    """Actor counts to measure, comma-separated (0: the single-process loop, for reference)."""
    seconds: float = 120.0
    """Measured time per setting, after the warm-up (every actor acting, one update done)."""
    ray_address: str = ""
    """Join this Ray cluster instead of starting Ray here."""
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


def measure(cfg: BenchScaleConfig, tasks: list[str], actors: int, home: str) -> dict:
    """One setting: learn for cfg.seconds after the warm-up; rates over that window."""
    from agent.learn_cli import LearnConfig, LearnRun

    run = LearnRun(LearnConfig(tasks=",".join(tasks), steps=10**9, home=home, tensorboard=False, progress=False,
                               checkpoint_every=10**9, curve_every=10**9, actors=actors, ray_address=cfg.ray_address,
                               scale=cfg.scale, agent=cfg.agent), tasks)
    marks: dict = {}
    update_s: list[float] = []
    step_bytes: list[float] = []
    t_start = time.time()

    def warm() -> bool:
        L = run.learner
        return L.updates >= 1 and (actors == 0 or all(s.episodes > 0 and s.version >= 1 for s in L.stats))

    def on_episode(r):
        L, now = run.learner, time.perf_counter()
        if "t0" not in marks and warm():
            marks.update(t0=now, steps0=L.env_steps, updates0=L.updates, wall_warm=time.time() - t_start)
        if r.episode % 20 == 0:  # what an actor sends per step (pickled Steps)
            step_bytes.append(len(pickle.dumps(r.transitions)) / max(len(r.transitions), 1))
        if "t0" in marks and now - marks["t0"] >= cfg.seconds:
            marks.update(t1=now, steps1=L.env_steps, updates1=L.updates)
            return False

    def on_update(info):
        if "t0" in marks:
            update_s.append(info["update_s"])

    try:
        run.start()
        run.learner.episode_callbacks.append(on_episode)
        run.learner.update_callbacks.append(on_update)
        run.learner.run(10**9)
        result = run.result()
    finally:
        run.close()
    dt = marks["t1"] - marks["t0"]
    out = {"actors": actors, "seconds": dt, "warmup_s": marks["wall_warm"],
           "env_steps_per_s": (marks["steps1"] - marks["steps0"]) / dt,
           "updates_per_s": (marks["updates1"] - marks["updates0"]) / dt,
           "update_s_mean": float(np.mean(update_s)) if update_s else None, "rollout": cfg.agent.rollout,
           "bytes_per_step": float(np.median(step_bytes)) if step_bytes else None,
           "success": {r["task"]: r["final_success"] for r in result["runs"]}}
    if actors:
        sc = result["scale"]
        out.update(policy_lag=sc["policy_lag"], broadcast_mb=sc["broadcast_mb"],
                   broadcast_put_ms=sc["broadcast_put_ms"], actor_steps_per_s=[a["steps_per_s"] for a in sc["actors"]])
    return out


def limits(settings: list[dict], sync_every: int) -> dict:
    """What the measured figures say about adding machines."""
    dist = [s for s in settings if s["actors"] > 0]
    if not dist:
        return {}
    best = max(dist, key=lambda s: s["actors"])
    per_actor = best["env_steps_per_s"] / best["actors"]
    learner_steps_per_s = best["rollout"] / best["update_s_mean"] if best["update_s_mean"] else None
    mb = best["broadcast_mb"]
    versions_per_s = best["updates_per_s"] / sync_every
    return {
        "per_actor_steps_per_s": per_actor,
        # a learner that only learns consumes rollout/update_s steps per second: past that, actors wait on it
        "learner_max_steps_per_s": learner_steps_per_s,
        "actors_one_learner_can_feed": learner_steps_per_s / per_actor if learner_steps_per_s and per_actor else None,
        "broadcast_mb_per_version": mb,
        "broadcast_mb_per_s_per_actor": mb * versions_per_s,
        # each actor fetches every version once; at learner_max the learner makes rollout steps per version
        "broadcast_mb_per_s_per_actor_at_learner_max": mb * learner_steps_per_s / best["rollout"] / sync_every
        if learner_steps_per_s else None,
        "episode_mb_per_s_into_learner": (best["bytes_per_step"] or 0) * best["env_steps_per_s"] / 2**20,
    }


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(BenchScaleConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    try:
        counts = [int(a) for a in cfg.actors.split(",") if a.strip()]
    except ValueError:
        raise UserError(f"--actors {cfg.actors!r}: expected comma-separated numbers such as 0,1,2") from None
    if not tasks or not counts or min(counts) < 0:
        raise UserError("--tasks and --actors must name at least one task and one count (>= 0)")
    out: dict = {"tasks": tasks, "encoder": cfg.agent.encoder, "cpus": os.cpu_count(),
                 "load_avg_1m": os.getloadavg()[0], "sync_every": cfg.scale.sync_every,
                 "inflight": cfg.scale.inflight, "settings": []}
    with tempfile.TemporaryDirectory(prefix="squirrel-bench-scale-") as tmp:
        for n in counts:
            s = measure(cfg, tasks, n, os.path.join(tmp, f"actors{n}"))
            out["settings"].append(s)
            lag = f", policy lag median {s['policy_lag']['median']:.0f} max {s['policy_lag']['max']}" if n else ""
            print(f"actors {n}: {s['env_steps_per_s']:.1f} env steps/s, {s['updates_per_s']:.3f} updates/s, "
                  f"update {s['update_s_mean'] or 0:.2f} s{lag}", flush=True)
    out["limits"] = limits(out["settings"], cfg.scale.sync_every)
    if out["limits"]:
        lim = out["limits"]
        print(f"limits: one learner absorbs ~{lim['learner_max_steps_per_s'] or 0:.0f} steps/s "
              f"(~{lim['actors_one_learner_can_feed'] or 0:.1f} actors at "
              f"{lim['per_actor_steps_per_s']:.1f} steps/s each); "
              f"a broadcast is {lim['broadcast_mb_per_version']:.1f} MB per version")
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0
