"""The agent home as the panel reads and edits it (Qt-free): the database, checkpoints, the agent log.

Every method may block (SQLite waits while the agent writes), so the panel calls them through
`Background`, never on the UI thread. The panel's connection is a second writer beside the agent's:
WAL keeps readers and the agent from blocking each other; tool edits are short transactions.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from memory.db import AgentDB, Episode, Step
from memory.tools import Tool, ToolLibrary

CKPT_RE = re.compile(r"^ckpt-(\d{10})\.safetensors$")


class HomeStore:
    def __init__(self, home: str | Path):
        self.home = Path(home).expanduser()
        self._db: AgentDB | None = None
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(env steps, path) of the complete checkpoints, oldest first. A checkpoint is complete once its
        metadata (.json, written after the tensors) exists: a process killed in between leaves one that
        resuming skips."""
        d = self.home / "checkpoints"
        found = [(int(m.group(1)), p) for p in d.glob("ckpt-*.safetensors")
                 if (m := CKPT_RE.match(p.name)) and p.with_suffix(".json").exists()] if d.is_dir() else []
        return sorted(found)

    @property
    def log_path(self) -> Path:
        return self.home / "panel-agent.log"

    @property
    def stop_file(self) -> Path:
        return self.home / "STOP"

    # -- the database ---------------------------------------------------------------------------------------
    @property
    def db(self) -> AgentDB:
        with self._lock:
            if self._db is None:
                self._db = AgentDB.open(self.home)  # creates the home and its database when new
            return self._db

    def tools_lib(self) -> ToolLibrary:
        return ToolLibrary(self.db)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def task_stats(self, window: int = 50) -> dict[str, dict]:
        """Per task: the agent's finished episodes, successes, and success rate over its last `window` episodes
        (a person's demonstrations are not counted)."""
        agents = "e.outcome IN ('success', 'failure') AND e.source = 'agent'"
        rows = self.db.read(
            "SELECT t.name, count(*), sum(e.outcome = 'success') FROM episodes e JOIN tasks t ON t.id = e.task_id "
            f"WHERE {agents} GROUP BY t.name")
        recent = dict(self.db.read(
            "SELECT name, avg(outcome = 'success') FROM (SELECT t.name AS name, e.outcome AS outcome, "
            "row_number() OVER (PARTITION BY e.task_id ORDER BY e.id DESC) AS rn FROM episodes e "
            f"JOIN tasks t ON t.id = e.task_id WHERE {agents}) WHERE rn <= ? GROUP BY name", (window,)))
        return {name: {"episodes": n, "successes": s or 0, "recent": recent.get(name)} for name, n, s in rows}

    def history(self) -> list[tuple[str, str, float | None, int | None]]:
        """(task, outcome, return, steps) of every episode the agent ran, oldest first (demonstrations
        excluded: they are not the agent's)."""
        return self.db.read("SELECT t.name, e.outcome, e.ret, e.steps FROM episodes e JOIN tasks t ON t.id = e.task_id "
                            "WHERE e.source = 'agent' ORDER BY e.id")

    def tasks(self) -> list[str]:
        return self.db.tasks()

    def episodes(self, task: str | None = None, outcome: str | None = None, limit: int = 500) -> list[Episode]:
        return self.db.episodes(task or None, outcome=outcome or None, limit=limit)

    def steps(self, episode_id: int) -> list[Step]:
        return self.db.steps(episode_id)

    def purge(self, task: str | None = None, older_than_days: float | None = None) -> dict:
        before = time.time() - older_than_days * 86400 if older_than_days else None
        if task is None and before is None:
            raise ValueError("choose a task or an age to purge")
        return self.db.purge(task or None, before)

    def memory_count(self) -> int:
        return self.db.read("SELECT count(*) FROM memory")[0][0]

    # -- tools -------------------------------------------------------------------------------------------
    def tools(self) -> list[Tool]:
        return self.tools_lib().list()

    def tool_action(self, action: str, tool_id: int, arg: str | None = None) -> None:
        lib = self.tools_lib()
        if action == "rename":
            lib.rename(tool_id, arg or "")
        elif action in ("approve", "prune", "restore"):
            getattr(lib, action)(tool_id)
        else:
            raise ValueError(f"unknown tool action {action!r}")

    def bulk_prune(self, below: float, min_calls: int) -> list[int]:
        """Prune every unpruned tool called at least `min_calls` times whose success rate is below `below`."""
        lib = self.tools_lib()
        ids = [t.id for t in lib.list() if t.status != "pruned" and t.calls >= max(1, min_calls)
               and (t.success_rate or 0.0) < below]
        with self.db.transaction():
            for tid in ids:
                lib.prune(tid)
        return ids

    def mine_tools(self) -> list[int]:
        return self.tools_lib().mine_new()
