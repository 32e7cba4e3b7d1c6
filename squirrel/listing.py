"""`squirrel tasks`: every available task with its source and gymnasium id."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TasksConfig:
    """List every available task (playground, MiniWoB++, user-defined TOML) with its source."""

    tasks_dir: str = ""
    """Folder of user task files (*.toml). Empty: $SQUIRREL_TASKS_DIR or ~/.config/squirrel/tasks."""
    check: str = ""
    """Validate one task file and exit (non-zero with a one-line message when it is bad)."""


def main(argv: list[str], prog: str) -> int:
    from pathlib import Path

    from agent.tasks.user import load_task, scan, tasks_dir
    from playground.tasks import TASKS
    from squirrel.config import parse

    cfg = parse(TasksConfig, argv, prog)
    if cfg.check:
        spec = load_task(cfg.check)
        print(f"ok: {cfg.check} defines squirrel/user-{spec.name}-v0 ({spec.checker['kind']} checker)")
        return 0
    print(f"{'id':<34} {'source':<12} description")
    for name, t in TASKS.items():
        print(f"{'squirrel/' + name + '-v0':<34} {'playground':<12} {t.description} (max {t.max_steps} steps)")
    from agent.tasks.miniwob import MINIWOB_TASKS

    for name in MINIWOB_TASKS:
        print(f"{'squirrel/miniwob-' + name + '-v0':<34} {'miniwob':<12} MiniWoB++ {name} in Chromium")
    d = Path(cfg.tasks_dir) if cfg.tasks_dir else tasks_dir()
    bad = 0
    for path, spec, err in scan(d):
        if spec is None:
            bad += 1
            print(f"{'(invalid)':<34} {str(path):<12} {err}")
        else:
            print(f"{'squirrel/user-' + spec.name + '-v0':<34} {str(path):<12} {spec.instruction}")
    print(f"user task folder: {d}" + ("" if d.is_dir() else " (none yet)"))
    return 1 if bad else 0
