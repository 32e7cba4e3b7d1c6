"""`squirrel panel`: the Qt control panel."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from squirrel.errors import UserError


@dataclass
class PanelConfig:
    """The Qt control panel: assign tasks, watch the agent learn, review its tools and memory."""

    home: str = ".squirrel/agent"
    """Agent home (database, checkpoints, curve, logs); choose another in the window. A new folder starts a new agent."""
    tasks: str = ""
    """Comma-separated tasks to assign at start (e.g. click-button,enter-text); pick more in the Tasks tab."""
    start: bool = False
    """Start the agent as soon as the window opens."""
    display: str = ""
    """An existing X display for the agent to act on. Empty: a private virtual display."""
    steps: int = 10_000_000
    """The agent's env-step budget (counting earlier runs); it stops there."""
    seed: int = 0
    """Random seed for the agent."""
    checkpoint_every: int = 2000
    """Env steps between checkpoints."""
    tensorboard: bool = True
    """Also write TensorBoard scalars to HOME/tb."""
    fps: float = 15.0
    """Frames per second of the live view."""
    tasks_dir: str = ""
    """Folder of user task files (*.toml). Empty: $SQUIRREL_TASKS_DIR or ~/.config/squirrel/tasks."""
    agent_args: str = ""
    """More `squirrel learn` options for the agent, quoted as one string (e.g. "--agent.rollout 64")."""
    quit_after: float = 0.0
    """Close the panel (stopping the agent) after this many seconds; 0: stay open."""
    screenshots: str = ""
    """Save a PNG of each tab into this folder when the panel closes (with --quit-after: for docs and checks)."""


def build(cfg: PanelConfig):
    """The controller and main window for `cfg` (a QApplication must exist)."""
    from gui.controller import AgentOptions, Controller
    from gui.window import MainWindow

    try:
        extra = tuple(shlex.split(cfg.agent_args))
    except ValueError as e:
        raise UserError(f"--agent-args: {e}") from None
    opts = AgentOptions(steps=cfg.steps, seed=cfg.seed, display=cfg.display, checkpoint_every=cfg.checkpoint_every,
                        tensorboard=cfg.tensorboard, fps=cfg.fps, extra=extra)
    ctl = Controller(cfg.home, opts)
    for t in (t.strip() for t in cfg.tasks.split(",")):
        if t:
            ctl.assignment.add(t)
    win = MainWindow(ctl, Path(cfg.tasks_dir) if cfg.tasks_dir else None)
    return ctl, win


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(PanelConfig, argv, prog)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        raise UserError("no display for the panel's window: run it in a desktop session (DISPLAY is not set)")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([prog])
    app.setApplicationName("Squirrel")
    ctl, win = build(cfg)
    win.show()
    if cfg.start:
        ctl.start()
    if cfg.quit_after > 0:
        QTimer.singleShot(int(cfg.quit_after * 1000), win.close)
    if cfg.screenshots:
        win.before_close = lambda: print("\n".join(str(p) for p in win.save_screenshots(cfg.screenshots)))
    return app.exec()
