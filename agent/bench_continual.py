"""`squirrel bench continual`: tasks learned one after another, every task evaluated after every stage.

Each variant is one `squirrel learn --tasks T1,...,Tn --stage-steps N` run (its own process, one torch thread,
its own virtual display): task i is learned for N env steps, then every task is evaluated greedily on fixed
seeds. With `--reference`, each task is also learned from scratch by the plain agent with the same budget,
for forward transfer. The Continual World metrics (Wolczyk et al. 2021), from those numbers:

    avg_final_success  mean over tasks of the greedy success after the last stage
    forgetting[i]      best greedy success of task i after its own stage, minus its final one (i < n)
    forward_transfer   mean over tasks of (AUC_i - AUC_ref_i) / (1 - AUC_ref_i), AUC = mean of the training
                       curve (moving success) over the task's N steps, in the stream vs from scratch
    steps_to_80[i]     env steps on task i until its training curve first reached 0.8 (null: never)
    decisions_per_success[i]  the policy's decisions per solved episode of task i in its stage's last 50
                       successes (a tool call is one decision, however many steps it runs)

Results are written after every finished run, so a stopped benchmark keeps what it has.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.bench_learn import Job, _start, _stop, steps_to_80
from squirrel import interrupt
from squirrel.errors import UserError

DEFAULT_TASKS = ("confirm-dialog,click-button,click-shape,choose-radio,click-tab,double-click-item,choose-menu,"
                 "right-click-item")
# what each variant switches on (squirrel learn flags); finetune is the plain agent learning the tasks in turn
# with recall (on by default) switched off
VARIANTS = {
    "full": "--agent.memory --agent.tools --agent.replay balanced --agent.ppo.bc-coef 0.1 --agent.plasticity 0.0001",
    "no-memory": "--agent.no-memory --agent.tools --agent.replay balanced --agent.ppo.bc-coef 0.1 "
                 "--agent.plasticity 0.0001",
    "no-tools": "--agent.memory --agent.replay balanced --agent.ppo.bc-coef 0.1 --agent.plasticity 0.0001",
    "no-replay": "--agent.memory --agent.tools --agent.plasticity 0.0001",
    "no-plasticity": "--agent.memory --agent.tools --agent.replay balanced --agent.ppo.bc-coef 0.1",
    "finetune": "--agent.no-memory",
}


@dataclass
class BenchContinualConfig:
    """Continual learning: a sequence of tasks, each learned in turn, all evaluated after every stage."""

    json: str
    """Write the results here (JSON); rewritten after every finished run."""
    tasks: str = DEFAULT_TASKS
    """Comma-separated tasks, learned in this order (at least 2; playground tasks, or fake-click,fake-type)."""
    steps_per_task: int = 1500
    """Env steps of learning per task (stage)."""
    variants: str = "full,no-memory,no-tools,finetune"
    """Comma-separated variants: full, no-memory, no-tools, no-replay, no-plasticity, finetune (plain fine-tuning)."""
    eval_episodes: int = 10
    """Greedy episodes per task in each evaluation."""
    reference: bool = True
    """Also learn each task from scratch with the plain agent (same budget): needed for forward transfer."""
    seed: int = 0
    """Random seed of every run."""
    parallel: int = 1
    """Runs at once (each one process with one torch thread and its own display)."""
    curve_every: int = 250
    """Env steps between training-curve points."""
    window: int = 50
    """Episodes in the moving success rate."""
    squirrel_args: str = ""
    """Extra arguments for every `squirrel learn` run."""
    workdir: str = ""
    """Keep each run's log, curve and home here. Empty: a temp folder, deleted at the end."""


def _auc(curve: list, steps: int) -> float | None:
    pts = [v for s, v in curve if s <= steps]
    return float(np.mean(pts)) if pts else None


def metrics(tasks: list[str], result: dict, reference: dict[str, dict]) -> dict:
    """The Continual World numbers of one variant from its `squirrel learn --stage-steps` JSON; `reference`
    maps a task to its from-scratch run (the runs[] entry), possibly empty."""
    stages = result.get("stages", [])
    runs = {r["task"]: r for r in result.get("runs", [])}
    steps = result.get("stage_steps", 0)
    out: dict = {"stages_done": len(stages)}
    if len(stages) < len(tasks):
        return out
    final = stages[-1]["eval"]
    after = {t: [st["eval"][t] for st in stages[i:]] for i, t in enumerate(tasks)}  # from its own stage on
    forgetting = [max(after[t]) - final[t] for t in tasks[:-1]]
    ft = []
    for t in tasks:
        a, b = _auc(runs.get(t, {}).get("curve", []), steps), _auc(reference.get(t, {}).get("curve", []), steps)
        ft.append(None if a is None or b is None else (a - b) / (1 - b) if b < 1 else 0.0)
    out.update(
        avg_final_success=float(np.mean([final[t] for t in tasks])),
        final_success={t: final[t] for t in tasks},
        forgetting=float(np.mean(forgetting)), forgetting_per_task=dict(zip(tasks[:-1], forgetting)),
        forward_transfer=float(np.mean([f for f in ft if f is not None])) if any(f is not None for f in ft) else None,
        forward_transfer_per_task=dict(zip(tasks, ft)),
        steps_to_80=[steps_to_80(runs.get(t, {}).get("curve", [])) for t in tasks],
        decisions_per_success=[runs.get(t, {}).get("decisions_per_success") for t in tasks],
        tool_calls_per_success=[runs.get(t, {}).get("tool_calls_per_success") for t in tasks],
        success_matrix=[[st["eval"][t] for t in tasks] for st in stages],  # row: after stage i; column: task
        training_curves={t: runs.get(t, {}).get("curve", []) for t in tasks},
    )
    return out


def _command(cfg: BenchContinualConfig, tasks: list[str], flags: str, out: Path, home: Path, stream: bool) -> list[str]:
    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", ",".join(tasks), "--home", str(home), "--no-progress",
           "--no-tensorboard", "--agent.threads", "1", "--seed", str(cfg.seed), "--json", str(out),
           "--curve-every", str(cfg.curve_every), "--window", str(cfg.window)]
    cmd += (["--stage-steps", str(cfg.steps_per_task), "--eval-episodes", str(cfg.eval_episodes)] if stream
            else ["--steps", str(cfg.steps_per_task)])
    return cmd + shlex.split(flags) + shlex.split(cfg.squirrel_args)


def _parse(argv: list[str], prog: str) -> tuple[BenchContinualConfig, list[str], list[str]]:
    from squirrel.config import parse

    cfg = parse(BenchContinualConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    variants = [v for v in cfg.variants.split(",") if v]
    if len(tasks) < 2 or len(set(tasks)) < len(tasks):
        raise UserError("--tasks: name at least two different tasks, in the order to learn them")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"unknown variant {bad[0] if bad else ''!r}; choose from {', '.join(VARIANTS)}")
    if all(t.startswith("fake-") for t in tasks):
        if set(tasks) - {"fake-click", "fake-type"}:
            raise UserError("the fake desktop runs fake-click and fake-type")
    else:
        from agent.registration import PLAYGROUND_TASKS

        unknown = [t for t in tasks if t not in PLAYGROUND_TASKS]
        if unknown:
            raise UserError(f"unknown playground task {unknown[0]!r}; `squirrel tasks` lists them")
    if cfg.steps_per_task < cfg.curve_every or cfg.curve_every < 1 or cfg.eval_episodes < 1 or cfg.parallel < 1:
        raise UserError("need --steps-per-task >= --curve-every >= 1, --eval-episodes >= 1 and --parallel >= 1")
    return cfg, tasks, variants


def _write(cfg: BenchContinualConfig, tasks, variants, results: dict, refs: dict, errors: dict, finished: bool) -> None:
    out = {"tasks": tasks, "steps_per_task": cfg.steps_per_task, "eval_episodes": cfg.eval_episodes, "seed": cfg.seed,
           "variant_flags": {v: VARIANTS[v] for v in variants}, "squirrel_args": cfg.squirrel_args,
           "reference": "the plain agent (finetune's flags) learning each task alone from scratch" if cfg.reference
           else None,
           "variants": {v: dict(metrics(tasks, results[v], refs), minutes=results[v].get("minutes"))
                        for v in variants if v in results},
           "reference_runs": refs, "errors": errors, "finished": finished}
    tmp = Path(cfg.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, cfg.json)


def main(argv: list[str], prog: str) -> int:
    cfg, tasks, variants = _parse(argv, prog)
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="squirrel-bench-continual-"))
    work.mkdir(parents=True, exist_ok=True)
    pending: deque[Job] = deque()
    for v in variants:
        pending.append(Job("stream", v, cfg.seed, work / f"{v}.json", work / f"{v}.log",
                           _command(cfg, tasks, VARIANTS[v], work / f"{v}.json", work / f"{v}.home", True)))
    for t in tasks if cfg.reference else []:
        pending.append(Job(t, "reference", cfg.seed, work / f"ref.{t}.json", work / f"ref.{t}.log",
                           _command(cfg, [t], VARIANTS["finetune"], work / f"ref.{t}.json", work / f"ref.{t}.home",
                                    False)))
    total, running, done = len(pending), [], 0
    results: dict[str, dict] = {}
    refs: dict[str, dict] = {}
    errors: dict[str, str] = {}
    print(f"bench continual: {len(tasks)} tasks x {cfg.steps_per_task} steps, variants {', '.join(variants)}"
          + (f", plus {len(tasks)} from-scratch references" if cfg.reference else "")
          + f"; {total} runs, {cfg.parallel} at once; logs in {work}", flush=True)
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
                job.logf.close()
                done += 1
                name = job.agent if job.task == "stream" else f"reference {job.task}"
                res = json.loads(job.out.read_text()) if job.out.exists() else {}
                minutes = (time.time() - job.t0) / 60
                if job.proc.returncode != 0 or not res:
                    lines = job.log.read_text(errors="replace").strip().splitlines()
                    errors[name] = f"exit code {job.proc.returncode}: " + "\n".join(lines[-15:])
                    print(f"[{done}/{total}] {name} FAILED after {minutes:.1f} min: {lines[-1] if lines else ''}",
                          flush=True)
                elif job.task == "stream":
                    results[job.agent] = dict(res, minutes=round(minutes, 2))
                    m = metrics(tasks, res, refs)
                    print(f"[{done}/{total}] {name}: " + (
                        f"average final success {m['avg_final_success']:.2f}, forgetting {m['forgetting']:.2f}, "
                        f"steps to 80% {m['steps_to_80']}" if "avg_final_success" in m
                        else f"stopped after {m['stages_done']} of {len(tasks)} stages") + f" ({minutes:.1f} min)",
                        flush=True)
                else:
                    run = next((r for r in res.get("runs", []) if r["task"] == job.task), None)
                    if run is not None:
                        refs[job.task] = run
                    print(f"[{done}/{total}] {name}: final success {run['final_success'] if run else None} "
                          f"({minutes:.1f} min)", flush=True)
                _write(cfg, tasks, variants, results, refs, errors, finished=False)
    except BaseException:  # Ctrl-C, SIGTERM, or our own error: stop the children first, then report
        _stop(running)
        _write(cfg, tasks, variants, results, refs, errors, finished=False)
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nbench continual: stopped; wrote {cfg.json} ({done} of {total} runs)", flush=True)
        raise
    _write(cfg, tasks, variants, results, refs, errors, finished=True)
    _print_summary(tasks, variants, results, refs)
    if not cfg.workdir and not errors:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {cfg.json}" + (f"; {len(errors)} runs FAILED (see errors in the JSON, logs in {work})"
                                 if errors else ""))
    return 1 if errors else 0


def _print_summary(tasks, variants, results, refs) -> None:
    print(f"\n{'variant':<14} {'avg final':>9} {'forgetting':>10} {'fwd transfer':>12}  steps to 80% per task")
    for v in variants:
        m = metrics(tasks, results.get(v, {}), refs)
        if "avg_final_success" not in m:
            continue
        ft = f"{m['forward_transfer']:.2f}" if m["forward_transfer"] is not None else "-"
        print(f"{v:<14} {m['avg_final_success']:>9.2f} {m['forgetting']:>10.2f} {ft:>12}  "
              + " ".join("-" if s is None else str(s) for s in m["steps_to_80"]))
