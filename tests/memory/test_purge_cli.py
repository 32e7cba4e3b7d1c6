"""`squirrel memory purge` through the real command: a task's data goes, the file shrinks, mistakes are one line."""

import subprocess
import sys

import numpy as np

from memory.db import AgentDB


def squirrel(*args):
    return subprocess.run([sys.executable, "-m", "squirrel", *args], capture_output=True, text=True, timeout=120)


def test_purge_a_task_shrinks_the_file_and_keeps_the_rest(tmp_path):
    with AgentDB.open(tmp_path) as db:
        for task in ("keep", "drop"):
            for i in range(200):
                e = db.begin_episode(task, i, "x")
                db.add_step(e, 0, {"kind": "click"}, 0.0, thumbnail=np.random.bytes(8000))
                db.end_episode(e, True, 1.0, 1)
    size = (tmp_path / "agent.db").stat().st_size
    r = squirrel("memory", "purge", "--home", str(tmp_path), "--task", "drop")
    assert r.returncode == 0 and "purged 200 episodes" in r.stdout, r.stderr
    assert (tmp_path / "agent.db").stat().st_size < 0.7 * size
    with AgentDB.open(tmp_path, readonly=True) as db:
        assert {e.task for e in db.episodes()} == {"keep"} and len(db.episodes()) == 200


def test_purge_mistakes_are_one_line(tmp_path):
    for args, says in [((), "say what to purge"), (("--task", "nope", "--home", str(tmp_path / "none")), "no agent database"),
                       (("--before", "yesterday", "--home", str(tmp_path)), "not a date")]:
        r = squirrel("memory", "purge", *args)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
