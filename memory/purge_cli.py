"""`squirrel memory purge`: remove a task's or a period's data from an agent home (episodes with their
steps, and episodic-memory entries), then VACUUM so the bytes are gone from the file. Tools stay."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from squirrel.errors import UserError


@dataclass
class PurgeConfig:
    """Remove a task's or a period's episodes and memory entries from an agent home; the file shrinks."""

    home: str = ".squirrel/agent"
    """Agent home (its agent.db)."""
    task: str = ""
    """Only this task's data."""
    older_than_days: float = 0.0
    """Only data older than this many days."""
    before: str = ""
    """Only data from before this date/time (ISO, e.g. 2026-11-01 or 2026-11-01T12:00)."""
    all: bool = False
    """Everything (episodes and memory of every task); needed when no other filter is given."""


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} purge [--home H] (--task T | --older-than-days D | --before DATE | --all)")
        return 0 if argv else 2
    if argv[0] != "purge":
        raise UserError(f"unknown {prog} command {argv[0]!r}; the one there is: purge")
    cfg = parse(PurgeConfig, argv[1:], f"{prog} purge")
    before = None
    if cfg.before:
        try:
            before = datetime.fromisoformat(cfg.before).timestamp()
        except ValueError:
            raise UserError(f"--before {cfg.before!r} is not a date; use e.g. 2026-11-01 or 2026-11-01T12:00") from None
    if cfg.older_than_days:
        if cfg.older_than_days < 0:
            raise UserError("--older-than-days must be positive")
        cut = time.time() - cfg.older_than_days * 86400
        before = cut if before is None else min(before, cut)
    if not (cfg.task or before is not None or cfg.all):
        raise UserError("say what to purge: --task T, --older-than-days D, --before DATE, or --all")
    path = Path(cfg.home) / "agent.db"
    if not path.exists():
        raise UserError(f"no agent database at {path}: check --home")
    from memory.db import AgentDB

    size0 = path.stat().st_size
    with AgentDB.open(cfg.home) as db:
        if cfg.task and cfg.task not in db.tasks():
            raise UserError(f"no task {cfg.task!r} in {path}; it has: {', '.join(db.tasks()) or 'none'}")
        n = db.purge(cfg.task or None, before)
    print(f"purged {n['episodes']} episodes and {n['memory']} memory entries; {path} "
          f"{size0 / 2**20:.1f} MB -> {path.stat().st_size / 2**20:.1f} MB")
    return 0
