"""`squirrel panel`: the entry point runs, closes itself, saves a screenshot of each tab; mistakes are one line."""

import os
import subprocess
import sys

import pytest

from gui.app import main
from squirrel.errors import UserError


def test_squirrel_panel_runs_and_saves_screenshots(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", SQUIRREL_TASKS_DIR=str(tmp_path / "tasks"))
    r = subprocess.run([sys.executable, "-m", "squirrel", "panel", "--home", str(tmp_path / "home"), "--quit-after", "1",
                        "--screenshots", str(tmp_path / "shots")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == [
        "panel-actors.png", "panel-curves.png", "panel-live.png", "panel-memory.png", "panel-tasks.png",
        "panel-tools.png"]
    assert (tmp_path / "home" / "agent.db").exists()  # a new home is created


def test_bad_options_are_one_line_errors(qapp):
    with pytest.raises(UserError, match="--agent-args: No closing quotation"):
        main(["--agent-args=--agent.encoder 'x"], "squirrel panel")
