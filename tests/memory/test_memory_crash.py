"""Killing the agent at any moment loses nothing whose commit returned (DESIGN.md decision 9)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memory.db import AgentDB
from memory.episodic import EpisodicMemory

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS = 24


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_committed_episode(tmp_path):
    rnd = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    committed: dict[int, int] = {}
    for run in range(KILLS):
        child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), str(run)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            line = child.stdout.readline()
            assert line == "ready\n", line + child.stderr.read()
            time.sleep(rnd.uniform(0.0, 0.25))  # a random moment while it writes
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        new = dict(tuple(map(int, ln.split())) for ln in out.splitlines())
        committed.update(new)

        with AgentDB.open(tmp_path) as db:
            assert db.integrity_check() == "ok"
            assert db.read("PRAGMA foreign_key_check") == []
            rows = dict((r[0], r[1:]) for r in db.read(
                "SELECT e.id, e.outcome, e.steps, (SELECT count(*) FROM steps s WHERE s.episode_id = e.id) "
                "FROM episodes e"))
            for e, n in committed.items():
                assert e in rows, f"run {run}: committed episode {e} lost"
                outcome, steps, stored = rows[e]
                assert outcome in ("success", "failure") and steps == n == stored, (run, e, rows[e])
            mem = EpisodicMemory(db, key_dim=32, capacity=400, per_task_quota=250)
            n_mem = db.read("SELECT count(*) FROM memory")[0][0]
            assert len(mem) == n_mem <= 400
            hits = mem.query(np.ones(32), 5)
            assert len(hits) == min(5, n_mem) and all(h.action == {"kind": "click"} for h in hits)
            mem.close(save=False)
    assert len(committed) >= KILLS  # the children did write between kills
