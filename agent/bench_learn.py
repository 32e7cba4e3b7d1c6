"""`squirrel bench learn`: success-rate curves vs env steps per task, Squirrel beside a random agent and SB3 PPO.

Every (task, agent, seed) run is its own subprocess with one torch thread and its own private
virtual display: Squirrel through `squirrel learn`, the baselines through this module's hidden
worker (`python -m agent.bench_learn --worker ...`, see `agent/baselines.py`). All runs use the same
gated env, the same step budget and the same curve (moving success over the last `--window`
episodes, a point every `--curve-every` env steps). Results are written after every finished run,
so a stopped or failed benchmark keeps what it has.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from squirrel import interrupt
from squirrel.errors import UserError

AGENTS = ("squirrel", "random", "sb3-ppo")
DEFAULT_TASKS = "click-button,click-shape,enter-text,focus-text,confirm-dialog,click-tab"


@dataclass
class BenchLearnConfig:
    """Learning curves from scratch: Squirrel vs a random agent vs stable-baselines3 PPO, same env and budget."""

    json: str
    """Write the results here (JSON); rewritten after every finished run."""
    tasks: str = DEFAULT_TASKS
    """Comma-separated playground tasks (or fake-click, the display-free fake desktop)."""
    steps: int = 20_000
    """Env steps per run (one task, one agent, one seed)."""
    seeds: int = 3
    """Seeds per task and agent (0..K-1)."""
    first_seed: int = 0
    """Seeds run are first-seed .. first-seed + seeds - 1 (to add seeds to an earlier run)."""
    agents: str = ",".join(AGENTS)
    """Comma-separated agents: squirrel, random, sb3-ppo."""
    parallel: int = 2
    """Runs at once (each one process with one torch thread and its own display)."""
    curve_every: int = 500
    """Env steps between learning-curve points."""
    window: int = 50
    """Episodes in the moving success rate."""
    sb3_n_steps: int = 128
    """SB3 PPO rollout length (its one hyperparameter changed from SB3's defaults)."""
    sb3_batch_size: int = 64
    """SB3 PPO minibatch size (SB3's default; must divide --sb3-n-steps)."""
    squirrel_args: str = ""
    """Extra arguments for every `squirrel learn` run, e.g. --squirrel-args='--agent.rollout 64'."""
    workdir: str = ""
    """Keep each run's log, curve and Squirrel home here. Empty: a temp folder, deleted at the end."""


@dataclass
class WorkerConfig:
    """(internal) One random-agent or SB3 PPO run of `squirrel bench learn`."""

    agent: str
    """random or sb3-ppo."""
    task: str
    """One task."""
    seed: int
    """Random seed."""
    steps: int
    """Env steps."""
    json: str
    """Write the curve here."""
    curve_every: int = 500
    """Env steps between curve points."""
    window: int = 50
    """Episodes in the moving success rate."""
    sb3_n_steps: int = 128
    """SB3 PPO rollout length."""
    sb3_batch_size: int = 64
    """SB3 PPO minibatch size."""
    threads: int = 1
    """torch CPU threads."""


@dataclass
class Job:
    task: str
    agent: str
    seed: int
    out: Path
    log: Path
    cmd: list[str]
    proc: subprocess.Popen | None = None
    t0: float = 0.0
    logf: object = field(default=None, repr=False)


def steps_to_80(curve: list) -> int | None:
    return next((int(s) for s, v in curve if v >= 0.8), None)


def _command(cfg: BenchLearnConfig, task: str, agent: str, seed: int, out: Path, home: Path) -> list[str]:
    common = ["--steps", str(cfg.steps), "--seed", str(seed), "--json", str(out),
              "--curve-every", str(cfg.curve_every), "--window", str(cfg.window)]
    if agent == "squirrel":
        return ([sys.executable, "-m", "squirrel", "learn", "--tasks", task, "--home", str(home), "--no-progress",
                 "--no-tensorboard", "--agent.threads", "1"] + common + shlex.split(cfg.squirrel_args))
    return ([sys.executable, "-m", "agent.bench_learn", "--worker", "--agent", agent, "--task", task,
             "--sb3-n-steps", str(cfg.sb3_n_steps), "--sb3-batch-size", str(cfg.sb3_batch_size)] + common)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the bench process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _start(job: Job) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    job.logf = open(job.log, "w")
    job.t0 = time.time()
    # its own session: a Ctrl-C reaches only us, and we stop the children in order (SIGTERM, then SIGKILL)
    job.proc = subprocess.Popen(job.cmd, stdout=job.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _finish(job: Job, code: int, steps: int) -> dict:
    job.logf.close()
    minutes = (time.time() - job.t0) / 60
    base = {"task": job.task, "agent": job.agent, "seed": job.seed, "minutes": round(minutes, 3)}
    if code == 0 and job.out.exists():
        res = json.loads(job.out.read_text())
        run = next((r for r in res["runs"] if r["task"] == job.task), None)
        if res.get("env_steps", 0) < steps:  # e.g. a squirrel learn stopped by a signal saves and exits 0
            run, err = None, f"the run stopped early, at {res.get('env_steps')} of {steps} env steps"
        elif run is None:
            err = f"the run finished without a curve for {job.task} (fewer than --curve-every steps?)"
        if run is not None:
            run = {k: v for k, v in run.items() if k not in ("task", "agent", "seed")}
            run["steps_to_80"] = steps_to_80(run["curve"])
            secs = res.get("seconds") or minutes * 60
            return dict(base, **run, steps_per_s=round(res.get("env_steps", 0) / max(secs, 1e-9), 2))
    else:
        lines = job.log.read_text(errors="replace").strip().splitlines()
        err = f"exit code {code}: " + "\n".join(lines[-15:])
    return dict(base, curve=[], final_success=None, steps_to_80=None, error=err)


def _mean_curve(curves: list[list], every: int) -> list:
    """Mean over seeds at each multiple of `every` that every seed's curve reached."""
    by_step = [{int(s) // every * every: v for s, v in c} for c in curves]
    common = sorted(set.intersection(*(set(b) for b in by_step))) if by_step else []
    return [[s, float(np.mean([b[s] for b in by_step]))] for s in common]


def summarize(runs: list[dict], tasks: list[str], agents: list[str], steps: int, every: int) -> tuple[dict, dict, dict]:
    summary: dict = {}
    for task in tasks:
        for agent in agents:
            rs = [r for r in runs if r["task"] == task and r["agent"] == agent]
            ok = [r for r in rs if "error" not in r]
            if not rs:
                continue
            fs = [r["final_success"] for r in ok]
            s80 = [r["steps_to_80"] for r in ok]
            reached = [s for s in s80 if s is not None]
            summary.setdefault(task, {})[agent] = {
                "runs": len(rs), "failed": len(rs) - len(ok),
                "final_success_mean": float(np.mean(fs)) if fs else None,
                "final_success_min": float(np.min(fs)) if fs else None,
                "final_success_max": float(np.max(fs)) if fs else None,
                "steps_to_80_mean": float(np.mean(s80)) if s80 and len(reached) == len(rs) else None,
                "reached_80": len(reached),
                # seeds that never reached 80% counted at the budget: a lower bound on the mean
                "steps_to_80_mean_at_least": float(np.mean([s if s is not None else steps for s in s80])) if s80 else None,
                "minutes_mean": float(np.mean([r["minutes"] for r in ok])) if ok else None,
                "steps_per_s_mean": float(np.mean([r["steps_per_s"] for r in ok])) if ok else None,
                "curve_mean": _mean_curve([r["curve"] for r in ok], every) if len(ok) == len(rs) else [],
            }
            ev = [r for r in ok if r.get("eval_curve")]  # greedy evaluations (squirrel learn --eval-every)
            if ev:
                summary[task][agent].update(
                    eval_final_success_mean=float(np.mean([r["eval_final_success"] for r in ev])),
                    eval_reached_80=sum(r["eval_steps_to_80"] is not None for r in ev),
                    eval_reached_90=sum(r["eval_steps_to_90"] is not None for r in ev))
    ratio, lower = {}, {}
    for task in tasks:
        sq = summary.get(task, {}).get("squirrel", {}).get("steps_to_80_mean")
        sb = summary.get(task, {}).get("sb3-ppo", {})
        ratio[task] = sb["steps_to_80_mean"] / sq if sq and sb.get("steps_to_80_mean") else None
        lower[task] = sb["steps_to_80_mean_at_least"] / sq if sq and sb.get("steps_to_80_mean_at_least") else None
    return summary, ratio, lower


def _write(path: str, cfg: BenchLearnConfig, tasks, agents, runs: list[dict], finished: bool) -> None:
    summary, ratio, lower = summarize(runs, tasks, agents, cfg.steps, cfg.curve_every)
    runs = sorted(runs, key=lambda r: (tasks.index(r["task"]), agents.index(r["agent"]), r["seed"]))
    out = {"runs": runs, "steps": cfg.steps, "seeds": cfg.seeds, "tasks": tasks, "agents": agents,
           "curve_every": cfg.curve_every, "window": cfg.window,
           "sb3": {"policy": "MultiInputPolicy", "n_steps": cfg.sb3_n_steps, "batch_size": cfg.sb3_batch_size},
           "squirrel_args": cfg.squirrel_args, "finished": finished, "summary": summary,
           "sb3_steps_ratio": ratio,
           # SB3 seeds that never reached 80% counted at the budget: the true ratio is at least this
           "sb3_steps_ratio_lower_bound": lower}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)


def _stop(jobs: list[Job], grace_s: float = 20.0) -> None:
    """SIGTERM every running child (each saves/cleans up and stops its display), then SIGKILL stragglers."""
    for j in jobs:
        if j.proc.poll() is None:
            j.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for j in jobs:
        try:
            j.proc.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            j.proc.kill()
            j.proc.wait()
        j.logf.close()


def _parse(argv: list[str], prog: str) -> tuple[BenchLearnConfig, list[str], list[str]]:
    from squirrel.config import parse

    cfg = parse(BenchLearnConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    agents = [a for a in cfg.agents.split(",") if a]
    if not tasks:
        raise UserError("--tasks is empty")
    bad = [a for a in agents if a not in AGENTS]
    if bad or not agents:
        raise UserError(f"unknown agent {bad[0] if bad else ''!r}; choose from {', '.join(AGENTS)}")
    fake = [t for t in tasks if t.startswith("fake-")]
    if fake and fake != ["fake-click"] * len(fake):
        raise UserError("the only fake task here is fake-click")
    if not fake:
        from agent.registration import PLAYGROUND_TASKS
        from agent.tasks.miniwob import task_name

        for t in tasks:
            if t.startswith("miniwob-"):
                task_name(t)  # a UserError naming an unknown MiniWoB++ task
        unknown = [t for t in tasks if t not in PLAYGROUND_TASKS and not t.startswith("miniwob-")]
        if unknown:
            raise UserError(f"unknown task {unknown[0]!r}; `squirrel tasks` lists the tasks")
    if cfg.seeds < 1 or cfg.parallel < 1 or cfg.steps < cfg.curve_every or cfg.curve_every < 1 or cfg.window < 1:
        raise UserError("need --seeds >= 1, --parallel >= 1, --window >= 1 and --steps >= --curve-every >= 1")
    if cfg.sb3_batch_size < 1 or cfg.sb3_n_steps % cfg.sb3_batch_size:
        raise UserError("--sb3-batch-size must divide --sb3-n-steps")
    return cfg, tasks, agents


def main(argv: list[str], prog: str) -> int:
    cfg, tasks, agents = _parse(argv, prog)
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="squirrel-bench-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    pending: deque[Job] = deque()
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):  # seed-major: partial results cover every task and agent early
        for task in tasks:
            for agent in agents:
                name = f"{task}.{agent}.s{seed}"
                out = work / f"{name}.json"
                pending.append(Job(task, agent, seed, out, work / f"{name}.log",
                                   _command(cfg, task, agent, seed, out, work / f"{name}.home")))
    total, runs, running = len(pending), [], []
    print(f"bench learn: {total} runs ({len(tasks)} tasks x {len(agents)} agents x {cfg.seeds} seeds), "
          f"{cfg.steps} steps each, {cfg.parallel} at once; logs in {work}", flush=True)
    try:
        while pending or running:
            while pending and len(running) < cfg.parallel:
                job = pending.popleft()
                _start(job)
                running.append(job)
            time.sleep(0.5)
            interrupt.check()
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                r = _finish(job, job.proc.returncode, cfg.steps)
                runs.append(r)
                _write(cfg.json, cfg, tasks, agents, runs, finished=False)
                head = f"[{len(runs)}/{total}] {r['task']:<16} {r['agent']:<9} seed {r['seed']}"
                if "error" in r:
                    print(f"{head}  FAILED after {r['minutes']:.1f} min: {r['error'].splitlines()[-1]}", flush=True)
                else:
                    s80 = r["steps_to_80"] if r["steps_to_80"] is not None else "never"
                    print(f"{head}  final success {r['final_success']:.2f}  80% at {s80}  "
                          f"{r['minutes']:.1f} min", flush=True)
    except BaseException:  # Ctrl-C, SIGTERM, or our own error: stop the children first, then report
        _stop(running)
        _write(cfg.json, cfg, tasks, agents, runs, finished=False)
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nbench learn: stopped {len(running)} running runs; wrote {cfg.json} ({len(runs)} of {total} runs)",
              flush=True)
        raise
    _write(cfg.json, cfg, tasks, agents, runs, finished=True)
    _print_summary(cfg, tasks, agents, runs)
    failed = sum("error" in r for r in runs)
    if not cfg.workdir and not failed:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {cfg.json}" + (f"; {failed} runs FAILED (errors in the JSON, logs in {work})" if failed else ""))
    return 1 if failed else 0


def _print_summary(cfg: BenchLearnConfig, tasks, agents, runs) -> None:
    summary, ratio, lower = summarize(runs, tasks, agents, cfg.steps, cfg.curve_every)
    print(f"\n{'task':<16} {'agent':<9} {'final success':>20} {'80% reached':>12} {'steps to 80%':>13}")
    for task in tasks:
        for agent in agents:
            s = summary.get(task, {}).get(agent)
            if not s or s["final_success_mean"] is None:
                continue
            fs = f"{s['final_success_mean']:.2f} ({s['final_success_min']:.2f}-{s['final_success_max']:.2f})"
            s80 = f"{s['steps_to_80_mean']:.0f}" if s["steps_to_80_mean"] is not None else "-"
            print(f"{task:<16} {agent:<9} {fs:>20} {s['reached_80']:>8}/{s['runs']:<3} {s80:>13}")
        if ratio.get(task) is not None or lower.get(task) is not None:
            r = f"{ratio[task]:.1f}x" if ratio[task] is not None else f">= {lower[task]:.1f}x"
            print(f"{'':<16} SB3 PPO / Squirrel steps to 80%: {r}")


def worker(argv: list[str]) -> int:
    """One random or SB3 PPO run: the same env as `squirrel learn`, the same curve, JSON like `squirrel learn --json`."""
    from squirrel.config import parse

    cfg = parse(WorkerConfig, argv, "python -m agent.bench_learn --worker")
    if cfg.agent not in ("random", "sb3-ppo"):
        raise UserError(f"the worker runs random or sb3-ppo, not {cfg.agent!r}")
    import torch

    from agent.baselines import run_random, run_sb3_ppo
    from agent.learn_cli import Curve, make_task_env

    torch.set_num_threads(cfg.threads)
    curve = Curve(cfg.window, cfg.curve_every)
    env = make_task_env([cfg.task], None)  # a private display, as `squirrel learn` makes it
    t0 = time.time()
    try:
        def on_episode(success, length):
            curve.add(cfg.task, success, length)

        if cfg.agent == "random":
            steps = run_random(env, cfg.steps, cfg.seed, on_episode)
        else:
            steps = run_sb3_ppo(env, cfg.steps, cfg.seed, on_episode, cfg.sb3_n_steps, cfg.sb3_batch_size)
    finally:
        env.close()
    out = {"runs": curve.runs(cfg.agent, cfg.seed), "env_steps": steps, "seconds": time.time() - t0}
    tmp = Path(cfg.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, cfg.json)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"]:
        sys.exit("this module's own entry is the internal worker of `squirrel bench learn`; run that instead")
    interrupt.install()
    try:
        sys.exit(worker(sys.argv[2:]))
    except UserError as e:
        sys.exit(f"squirrel: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
