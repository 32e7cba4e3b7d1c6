"""Panel fixtures: a window over a fresh agent home; the agent (when started) is the tiny encoder on the
display-free fake desktop, so a start costs a few seconds and no display."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
AGENT_ARGS = f"--agent.encoder {TINY} --agent.threads 1 --agent.rollout 32 --agent.ppo.epochs 1"


@pytest.fixture
def panel(qtbot, tmp_path, monkeypatch):
    """make(**PanelConfig fields) -> (controller, window); every agent it starts is stopped after the test."""
    from gui.app import PanelConfig, build

    monkeypatch.setenv("SQUIRREL_TASKS_DIR", str(tmp_path / "tasks"))
    made = []

    def make(**kw):
        kw = dict(dict(home=str(tmp_path / "home"), tasks="fake-click", tensorboard=False, agent_args=AGENT_ARGS,
                       tasks_dir=str(tmp_path / "tasks")), **kw)
        ctl, win = build(PanelConfig(**kw))
        qtbot.addWidget(win)
        made.append(ctl)
        return ctl, win

    yield make
    for ctl in made:
        if ctl.proc is not None and ctl.proc.alive():
            ctl.proc.kill()
            ctl.proc.proc.wait(10)
        ctl.shutdown(wait_s=5)
