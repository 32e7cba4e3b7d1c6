"""`squirrel bench soak`: a long `squirrel learn` run, sampling its resources to show they stay bounded.

Every `--sample-s` seconds: the resident memory (RSS) and open file descriptors of every process the
run started (the learner, its Xvfb, the task app), the database's size on disk (with its WAL), the
home's total size, and the learner's env steps and episodes. After the warm-up (the first
`--warmup` fraction of the run) a straight line is fitted to each: a metric is bounded when the line
would grow it by less than `--tolerance` of its level over the rest of the run. At the end the run
gets SIGTERM, which must save a checkpoint and exit 0.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agent.bench_crash import descendants, kill_tree
from agent.home import scratch_home
from squirrel.errors import UserError


@dataclass
class BenchSoakConfig:
    """Run `squirrel learn` for a long time and sample RSS, database size and open files."""

    json: str = ""
    """Write the samples and the verdict here (JSON)."""
    minutes: float = 30.0
    """How long to learn."""
    sample_s: float = 60.0
    """Seconds between samples."""
    tasks: str = "click-shape"
    """Tasks to learn (playground tasks run on the run's own Xvfb)."""
    encoder: str = ""
    """Screen encoder config for the learner. Empty: the agent's default."""
    extra: str = ""
    """More `squirrel learn` options, e.g. "--agent.sil-capacity 500" (a buffer that fills early)."""
    warmup: float = 0.5
    """Fraction of the run before the trend is fitted."""
    tolerance: float = 0.1
    """A metric is bounded when its fitted growth after warm-up is below this fraction of its level."""
    home: str = ""
    """Agent home to use (kept afterwards). Empty: a temp folder, deleted at the end."""


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _dir_bytes(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def sample(proc: subprocess.Popen, home: Path, t0: float) -> dict:
    pids = [proc.pid] + descendants(proc.pid)
    db = home / "agent.db"
    db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    row = {"t_s": round(time.monotonic() - t0, 1), "processes": len(pids),
           "rss_mb": round(sum(_status_kb(p, "VmRSS") for p in pids) / 1024, 1),
           "learner_rss_mb": round(_status_kb(proc.pid, "VmRSS") / 1024, 1),
           "fds": sum(_fds(p) for p in pids), "db_mb": round(db_bytes / 2**20, 3),
           "home_mb": round(_dir_bytes(home) / 2**20, 2)}
    try:
        from memory.db import AgentDB

        with AgentDB.open(home, readonly=True, timeout=2.0) as adb:
            row["episodes"] = adb.read("SELECT count(*) FROM episodes")[0][0]
            row["steps"] = adb.read("SELECT count(*) FROM steps")[0][0]
    except UserError:
        row["episodes"] = row["steps"] = None
    return row


def trend(samples: list[dict], key: str, warmup: float, tolerance: float) -> dict:
    """Straight-line fit of `key` over the samples after the warm-up: slope per minute and a verdict."""
    t_end = samples[-1]["t_s"]
    pts = [(s["t_s"] / 60, s[key]) for s in samples if s["t_s"] >= warmup * t_end and s[key] is not None]
    if len(pts) < 3:
        return {"samples": len(pts), "bounded": None}
    t, v = np.array(pts, dtype=float).T
    slope = float(np.polyfit(t, v, 1)[0])
    level = float(np.mean(v))
    growth = slope * (t[-1] - t[0]) / level if level else 0.0
    return {"samples": len(pts), "first": float(v[0]), "last": float(v[-1]), "max": float(v.max()), "mean": level,
            "slope_per_min": slope, "growth_over_window": growth, "bounded": bool(growth < tolerance)}


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(BenchSoakConfig, argv, prog)
    if cfg.minutes <= 0 or cfg.sample_s <= 0:
        raise UserError("--minutes and --sample-s must be positive")
    with scratch_home(cfg.home, "squirrel-soak-") as home:
        result = run(cfg, home)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=1))
    v = result["trends"]
    print("; ".join(f"{k}: {v[k].get('first')} -> {v[k].get('last')} after warm-up "
                    f"({v[k].get('slope_per_min', 0):+.3g}/min, bounded {v[k]['bounded']})" for k in v))
    print(f"{result['env_steps']} env steps, {result['episodes']} episodes; SIGTERM exit {result['exit_code']}, "
          f"checkpoint saved: {result['checkpoint_saved']}")
    return 0 if result["exit_code"] == 0 else 1


def run(cfg: BenchSoakConfig, home: Path) -> dict:
    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", cfg.tasks, "--home", str(home), "--steps", str(10**9),
           "--no-progress", "--agent.threads", "1"] + (["--agent.encoder", cfg.encoder] if cfg.encoder else []) \
        + shlex.split(cfg.extra)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home.parent / f"{home.name}.log", "w+b") if cfg.home else tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    t0 = time.monotonic()
    samples = []
    try:
        end = t0 + cfg.minutes * 60
        nxt = t0
        while time.monotonic() < end and proc.poll() is None:
            if time.monotonic() >= nxt:
                samples.append(sample(proc, home, t0))
                nxt += cfg.sample_s
            time.sleep(max(0.0, min(nxt, end) - time.monotonic()))
        crashed = proc.poll() is not None
        if not crashed:
            samples.append(sample(proc, home, t0))
            proc.send_signal(signal.SIGTERM)  # must save a checkpoint and exit 0
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace")
        log.close()
    from trainer.checkpoint import list_checkpoints

    ckpts = list_checkpoints(home / "checkpoints")
    curve = json.loads((home / "curve.json").read_text()) if (home / "curve.json").exists() else {}
    keys = ("rss_mb", "fds", "db_mb", "home_mb", "processes")
    return {"config": asdict(cfg), "samples": samples,
            "trends": {k: trend(samples, k, cfg.warmup, cfg.tolerance) for k in keys},
            "db_bytes_per_step": _per_step(samples), "env_steps": curve.get("env_steps"),
            "episodes": samples[-1].get("episodes") if samples else None, "exit_code": proc.returncode,
            "crashed": crashed, "checkpoint_saved": bool(ckpts), "log_tail": tail if proc.returncode else ""}


def _per_step(samples: list[dict]) -> float | None:
    """Database bytes added per recorded env step after the warm-up (what retention would have to bound)."""
    pts = [(s["steps"], s["db_mb"] * 2**20) for s in samples[len(samples) // 2:] if s.get("steps")]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
