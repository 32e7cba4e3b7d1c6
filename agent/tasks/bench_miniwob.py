"""`squirrel bench miniwob`: learning curves from scratch on MiniWoB++ tasks, env steps/s and reset time.

Each (task, agent, seed) run is `squirrel learn --tasks miniwob-<task>` (or the random / SB3 PPO
worker of `squirrel bench learn`) in its own subprocess, with its own private display and Chromium:
the same runner, curve and JSON as `squirrel bench learn`. Each run's env also writes its timing
figures (reset and step medians, browser restarts) to a file this bench reads, so every run in the
JSON carries `steps_per_s` (env steps per second of the whole run, learning included) and
`reset_ms_median`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.bench_learn import (AGENTS, BenchLearnConfig, Job, _command, _die_with_parent, _finish, _print_summary, _stop,
                               summarize)
from agent.tasks.miniwob import PREFIX, STATS_ENV, find_chromium, html_dir, task_name
from squirrel import interrupt
from squirrel.errors import UserError

DEFAULT_TASKS = "click-test,click-test-2,click-button,click-dialog,click-color,focus-text,enter-text,click-tab"


@dataclass
class BenchMiniWobConfig:
    """MiniWoB++ learning curves from scratch (Chromium on a private display per run), env steps/s, reset time."""

    json: str
    """Write the results here (JSON, the `bench learn` format); rewritten after every finished run."""
    tasks: str = DEFAULT_TASKS
    """Comma-separated MiniWoB++ tasks (click-test or miniwob-click-test)."""
    steps: int = 20_000
    """Env steps per run (one task, one agent, one seed)."""
    seeds: int = 1
    """Seeds per task and agent (0..K-1)."""
    agents: str = "squirrel,random"
    """Comma-separated agents: squirrel, random, sb3-ppo."""
    parallel: int = 1
    """Runs at once (each one process with one torch thread, its own display and browser)."""
    curve_every: int = 500
    """Env steps between learning-curve points."""
    window: int = 50
    """Episodes in the moving success rate."""
    sb3_n_steps: int = 128
    """SB3 PPO rollout length."""
    sb3_batch_size: int = 64
    """SB3 PPO minibatch size (must divide --sb3-n-steps)."""
    squirrel_args: str = ""
    """Extra arguments for every `squirrel learn` run, e.g. --squirrel-args='--agent.rollout 64'."""
    workdir: str = ""
    """Keep each run's log, curve and Squirrel home here. Empty: a temp folder, deleted at the end."""


def _parse(argv: list[str], prog: str) -> tuple[BenchMiniWobConfig, list[str], list[str]]:
    from squirrel.config import parse

    cfg = parse(BenchMiniWobConfig, argv, prog)
    tasks = [PREFIX + task_name(t) for t in cfg.tasks.split(",") if t]
    agents = [a for a in cfg.agents.split(",") if a]
    if not tasks:
        raise UserError("--tasks is empty")
    bad = [a for a in agents if a not in AGENTS]
    if bad or not agents:
        raise UserError(f"unknown agent {bad[0] if bad else ''!r}; choose from {', '.join(AGENTS)}")
    if cfg.seeds < 1 or cfg.parallel < 1 or cfg.steps < cfg.curve_every or cfg.curve_every < 1 or cfg.window < 1:
        raise UserError("need --seeds >= 1, --parallel >= 1, --window >= 1 and --steps >= --curve-every >= 1")
    if cfg.sb3_batch_size < 1 or cfg.sb3_n_steps % cfg.sb3_batch_size:
        raise UserError("--sb3-batch-size must divide --sb3-n-steps")
    find_chromium(), html_dir()  # fail now, not in every run
    return cfg, tasks, agents


def _start(job: Job, stats: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env[STATS_ENV] = str(stats)
    job.logf = open(job.log, "w")
    job.t0 = time.time()
    job.proc = subprocess.Popen(job.cmd, stdout=job.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _with_stats(run: dict, stats: Path) -> dict:
    try:
        s = json.loads(stats.read_text())
    except (OSError, ValueError):
        s = {}
    return dict(run, reset_ms_median=s.get("reset_ms_median"), env_step_ms_median=s.get("step_ms_median"),
                browser_restarts=s.get("browser_restarts"), input_timeouts=s.get("input_timeouts"),
                clock_timeouts=s.get("clock_timeouts"))


def _write(cfg: BenchMiniWobConfig, tasks, agents, runs: list[dict], finished: bool) -> None:
    summary, _, _ = summarize(runs, tasks, agents, cfg.steps, cfg.curve_every)
    for task, by_agent in summary.items():
        for agent, s in by_agent.items():
            r = [x["reset_ms_median"] for x in runs if x["task"] == task and x["agent"] == agent
                 and x.get("reset_ms_median") is not None]
            s["reset_ms_median_mean"] = float(np.mean(r)) if r else None
    runs = sorted(runs, key=lambda r: (tasks.index(r["task"]), agents.index(r["agent"]), r["seed"]))
    out = {"runs": runs, "steps": cfg.steps, "seeds": cfg.seeds, "tasks": tasks, "agents": agents,
           "curve_every": cfg.curve_every, "window": cfg.window, "squirrel_args": cfg.squirrel_args,
           "finished": finished, "summary": summary}
    tmp = Path(cfg.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, cfg.json)


def main(argv: list[str], prog: str) -> int:
    cfg, tasks, agents = _parse(argv, prog)
    lcfg = BenchLearnConfig(json=cfg.json, steps=cfg.steps, curve_every=cfg.curve_every, window=cfg.window,
                            sb3_n_steps=cfg.sb3_n_steps, sb3_batch_size=cfg.sb3_batch_size,
                            squirrel_args=cfg.squirrel_args)
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="squirrel-bench-miniwob-"))
    work.mkdir(parents=True, exist_ok=True)
    pending: deque[Job] = deque()
    for seed in range(cfg.seeds):
        for task in tasks:
            for agent in agents:
                name = f"{task}.{agent}.s{seed}"
                out = work / f"{name}.json"
                pending.append(Job(task, agent, seed, out, work / f"{name}.log",
                                   _command(lcfg, task, agent, seed, out, work / f"{name}.home")))
    total, runs, running = len(pending), [], []
    print(f"bench miniwob: {total} runs ({len(tasks)} tasks x {len(agents)} agents x {cfg.seeds} seeds), "
          f"{cfg.steps} steps each, {cfg.parallel} at once; logs in {work}", flush=True)
    try:
        while pending or running:
            while pending and len(running) < cfg.parallel:
                job = pending.popleft()
                _start(job, job.out.with_suffix(".stats.json"))
                running.append(job)
            time.sleep(0.5)
            interrupt.check()
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                r = _with_stats(_finish(job, job.proc.returncode, cfg.steps), job.out.with_suffix(".stats.json"))
                runs.append(r)
                _write(cfg, tasks, agents, runs, finished=False)
                head = f"[{len(runs)}/{total}] {r['task']:<24} {r['agent']:<9} seed {r['seed']}"
                if "error" in r:
                    print(f"{head}  FAILED after {r['minutes']:.1f} min: {r['error'].splitlines()[-1]}", flush=True)
                else:
                    s80 = r["steps_to_80"] if r["steps_to_80"] is not None else "never"
                    print(f"{head}  final success {r['final_success']:.2f}  80% at {s80}  {r['steps_per_s']:.1f} "
                          f"steps/s  reset {r['reset_ms_median']} ms  {r['minutes']:.1f} min", flush=True)
    except BaseException:  # Ctrl-C, SIGTERM, or our own error: stop the children first, then report
        _stop(running)
        _write(cfg, tasks, agents, runs, finished=False)
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nbench miniwob: stopped {len(running)} running runs; wrote {cfg.json} ({len(runs)} of {total} runs)",
              flush=True)
        raise
    _write(cfg, tasks, agents, runs, finished=True)
    _print_summary(lcfg, tasks, agents, runs)
    failed = sum("error" in r for r in runs)
    if not cfg.workdir and not failed:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {cfg.json}" + (f"; {failed} runs FAILED (errors in the JSON, logs in {work})" if failed else ""))
    return 1 if failed else 0
