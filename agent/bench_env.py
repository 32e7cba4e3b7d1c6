"""`squirrel bench env`: per playground task, the oracle's success and speed, and a random agent's success."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchEnvConfig:
    """Benchmark the desktop env on every playground task (oracle and random agent)."""

    json: str = ""
    """Write the results here (JSON). Empty: print only."""
    tasks: str = ""
    """Comma-separated task names. Empty: all playground tasks."""
    episodes: int = 10
    """Oracle episodes per task (seeds 0..N-1)."""
    random_episodes: int = 50
    """Random-agent episodes per task."""
    display: str = ""
    """Use this existing X display. Empty: start a private virtual display."""


def run_oracle(env, seed: int) -> tuple[bool, list[dict]]:
    env.reset(seed=seed)
    steps, info, done = [], {}, False
    while not done:
        a = env.unwrapped.oracle_action()
        if a is None:
            break
        t = time.perf_counter()
        _, _, term, trunc, info = env.step(a)
        steps.append(dict(env.unwrapped.timings(), step_ms=(time.perf_counter() - t) * 1e3))
        done = term or trunc
    return info.get("success") is True, steps


def run_random(env, seed: int) -> bool:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    while True:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        if term or trunc:
            return info.get("success") is True


def main(argv: list[str], prog: str) -> int:
    from tqdm import tqdm

    from agent.env import Desktop
    from agent.registration import PLAYGROUND_TASKS, make_env
    from squirrel.config import parse

    cfg = parse(BenchEnvConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t] or list(PLAYGROUND_TASKS)
    rows = []
    with Desktop(cfg.display or None) as desktop:
        for task in tqdm(tasks, desc="bench env", unit="task"):
            env = make_env(task, desktop=desktop)
            env.get_wrapper_attr("config").max_actions_per_s = 1e6  # measure the env, not the rate cap
            wins, infos, t_steps = 0, [], 0.0
            for seed in range(cfg.episodes):
                ok, steps = run_oracle(env, seed)
                wins += ok
                infos += steps
                t_steps += sum(s["step_ms"] for s in steps) / 1e3
            rand = sum(run_random(env, 10_000 + s) for s in range(cfg.random_episodes))

            def med(k: str, infos=infos) -> float:
                return float(np.median([s[k] for s in infos]))

            overhead = [s["step_ms"] - s["sync_ms"] for s in infos]
            rows.append({
                "task": task, "oracle_success": wins / cfg.episodes, "oracle_steps_per_s": len(infos) / t_steps,
                "oracle_steps_per_episode": len(infos) / cfg.episodes,
                "step_ms_median": med("step_ms"), "app_sync_ms_median": med("sync_ms"),
                "env_overhead_ms_median": float(np.median(overhead)),
                "settle_ms_median": med("settle_ms"), "capture_ms_median": med("capture_ms"),
                "action_ms_median": med("action_ms"), "random_success": rand / cfg.random_episodes,
            })
            env.close()
    out = {"tasks": rows, "episodes": cfg.episodes, "random_episodes": cfg.random_episodes}
    cols = ("oracle_success", "oracle_steps_per_s", "step_ms_median", "app_sync_ms_median", "env_overhead_ms_median",
            "settle_ms_median", "capture_ms_median", "action_ms_median", "random_success")
    print(f"{'task':<18} " + " ".join(f"{c[:14]:>14}" for c in cols))
    for r in rows:
        print(f"{r['task']:<18} " + " ".join(f"{r[c]:>14.3f}" for c in cols))
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {cfg.json}")
    return 0
