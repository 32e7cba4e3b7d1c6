"""The agent in its own process, driven from the window: assigning reaches it, pause and stop take effect
(stop within a second), the UI stays responsive while it learns, a crash is shown and a restart resumes
from the checkpoint, a person's takeover is recorded as a demonstration, thumbs reach the database."""

import json
import os
import signal
import time

import numpy as np
from PySide6.QtCore import QPoint, Qt

from memory.db import AgentDB

LEFT = Qt.MouseButton.LeftButton


def started(ctl, qtbot, episodes=2):
    qtbot.waitUntil(lambda: ctl.state.status == "running" and ctl.state.episodes >= episodes, timeout=60_000)


def test_assign_pause_resume_stop_while_the_ui_stays_responsive(panel, qtbot, tmp_path):
    ctl, win = panel()
    win.show()
    qtbot.mouseClick(win.control.start_btn, LEFT)
    started(ctl, qtbot)
    assert ctl.state.assigned == ["fake-click"] and not win.control.start_btn.isEnabled()

    # assign a mix: fake-type twice as often as fake-click
    browser = win.tasks.browser
    qtbot.waitUntil(lambda: any(it.text(0) == "fake-type" for it in browser.items()), timeout=5000)
    next(it for it in browser.items() if it.text(0) == "fake-type").setSelected(True)
    qtbot.mouseClick(browser.add_btn, LEFT)
    ctl.assignment.set_weight("fake-type", 2)
    qtbot.mouseClick(win.tasks.assignment.assign_btn, LEFT)
    qtbot.waitUntil(lambda: sorted(ctl.state.assigned) == ["fake-click", "fake-type", "fake-type"], timeout=10_000)
    qtbot.waitUntil(lambda: ctl.curves.episodes.get("fake-type", 0) >= 2, timeout=30_000)

    # responsiveness while it learns, with the live view showing its frames
    win.tabs.setCurrentWidget(win.live)
    win.latency.reset()
    steps0 = ctl.state.env_steps
    qtbot.wait(3000)
    lat = win.latency.stats()
    record = dict(lat, fps=round(ctl.live.fps, 1), env_steps=ctl.state.env_steps - steps0)
    print("\nevent-loop latency while the agent learns:", json.dumps(record))
    (tmp_path / "latency.json").write_text(json.dumps(record))
    assert lat["n"] > 100 and lat["p99_ms"] < 50, lat
    assert ctl.live.fps >= 10 and ctl.live.frame is not None and record["env_steps"] > 0
    qtbot.waitUntil(lambda: ctl.live.heat is not None and ctl.live.heat.shape == (13, 10), timeout=5000)  # the click
    # heat map over the encoder's patches (none for the instant between a reset and the agent's decision)

    # pause: no step is taken until resumed
    qtbot.mouseClick(win.control.pause_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "paused", timeout=10_000)
    qtbot.wait(1200)  # heartbeats (every 0.5 s while paused) carry the true count
    paused_at = ctl.state.env_steps
    qtbot.wait(1200)
    assert ctl.state.env_steps == paused_at and win.control.resume_btn.isEnabled()
    qtbot.mouseClick(win.control.resume_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.env_steps > paused_at, timeout=10_000)

    # stop: within a second, with a checkpoint
    t0 = time.monotonic()
    qtbot.mouseClick(win.control.stop_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "stopped", timeout=5000)
    took = time.monotonic() - t0
    print(f"stop took {took:.2f} s")
    assert took < 1.0 and not ctl.proc.alive() and ctl.proc.proc.returncode == 0
    assert ctl.store.checkpoints() and win.control.start_btn.text() == "Restart"
    with AgentDB.open(ctl.home, readonly=True) as db:
        tasks = [e.task for e in db.episodes()]
    assert tasks.count("fake-type") >= 2 and len(tasks) == ctl.state.episodes


def test_a_crash_is_shown_and_a_restart_resumes_from_the_checkpoint(panel, qtbot):
    ctl, win = panel(checkpoint_every=32)
    win.show()
    ctl.start()
    qtbot.waitUntil(lambda: ctl.state.status == "running" and bool(ctl.store.checkpoints()), timeout=60_000)
    os.kill(ctl.proc.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: ctl.state.status == "crashed", timeout=5000)
    assert win.control.banner.isVisible() and "killed by SIGKILL" in win.control.banner_text.text()
    assert any("the agent process died" in m for _, level, m in ctl.state.messages if level == "error")
    ckpt = ctl.store.checkpoints()[-1][0]
    assert f"{ckpt:,} env steps" in win.control.banner_text.text()
    qtbot.mouseClick(win.control.restart_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "running", timeout=60_000)
    assert ctl.state.resumed_from == ckpt and not win.control.banner.isVisible(), ctl.store.log_path.read_text()[-2000:]
    qtbot.waitUntil(lambda: ctl.state.env_steps > ckpt, timeout=30_000)
    ctl.stop()
    qtbot.waitUntil(lambda: ctl.state.status == "stopped", timeout=5000)


def test_takeover_is_recorded_as_a_demonstration_and_thumbs_reach_the_database(panel, qtbot):
    ctl, win = panel()
    win.show()
    win.tabs.setCurrentWidget(win.live)
    ctl.start()
    started(ctl, qtbot)
    # thumbs up on the last episode: its outcome in the database
    eid = ctl.live.last_episode["id"]
    qtbot.mouseClick(win.live.up, LEFT)
    qtbot.waitUntil(lambda: any(f"episode {eid} marked a success" in m for _, _, m in ctl.state.messages), timeout=10_000)
    with AgentDB.open(ctl.home, readonly=True) as db:
        assert db.episode(eid).outcome == "success"

    qtbot.mouseClick(win.live.takeover_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.live.takeover == "ready" and ctl.live.demo, timeout=20_000)
    canvas = win.live.canvas
    frame = ctl.live.frame
    ys, xs = np.nonzero((frame != 255).any(-1))  # the one coloured box
    x, y = int(xs.mean()), int(ys.mean())
    r = canvas.frame_rect()
    pos = QPoint(int(r.left() + (x + 0.5) * r.width() / frame.shape[1]), int(r.top() + (y + 0.5) * r.height() / frame.shape[0]))
    assert abs(canvas.to_frame(pos)[0] - x) <= 1
    qtbot.mouseClick(canvas, LEFT, pos=pos)
    qtbot.waitUntil(lambda: any("your demonstration of fake-click succeeded" in m for _, _, m in ctl.state.messages),
                    timeout=10_000)
    qtbot.mouseClick(win.live.takeover_btn, LEFT)  # hand back
    qtbot.waitUntil(lambda: ctl.live.takeover == "off", timeout=10_000)
    n = ctl.state.episodes
    qtbot.waitUntil(lambda: ctl.state.episodes > n, timeout=20_000)  # the agent acts again
    with AgentDB.open(ctl.home, readonly=True) as db:
        demos = [e for e in db.episodes() if e.source == "person"]
        assert len(demos) == 1 and demos[0].outcome == "success" and demos[0].steps == 1
        (step,) = db.steps(demos[0].id)
        assert step.action["kind"] == "click" and abs(step.action["x"] - x) <= 1 and step.target is not None
    ctl.stop()
    qtbot.waitUntil(lambda: ctl.state.status == "stopped", timeout=5000)


def test_an_error_in_the_agent_is_shown_in_the_window(panel, qtbot, tmp_path):
    ctl, win = panel(agent_args="--agent.rollout many")
    win.show()
    ctl.start()
    qtbot.waitUntil(lambda: ctl.state.status == "stopped", timeout=60_000)
    assert ctl.state.detail.startswith("with an error (exit code 1")
    errors = [m for _, level, m in ctl.state.messages if level == "error"]
    assert errors and "invalid agent options" in errors[0] and "--agent.rollout many" in errors[0], errors
    assert "invalid agent options" in win.messages.toPlainText() and win.control.start_btn.isEnabled()
    assert "many" in ctl.store.log_path.read_text()  # tyro's explanation, in the agent's log



def test_stop_interrupts_a_long_update_and_still_saves(tmp_path):
    """The loop looks for a stop only between steps; an update that takes seconds is interrupted instead."""
    import sys
    from pathlib import Path

    from gui.client import AgentProcess

    events = []
    proc = AgentProcess(events.append, [sys.executable, str(Path(__file__).with_name("busy_agent.py"))])
    tiny = Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json"
    proc.start(["--tasks", "fake-click", "--home", str(tmp_path), "--no-progress", "--no-tensorboard",
                "--agent.encoder", str(tiny), "--agent.rollout", "8"], tmp_path / "agent.log", str(tmp_path / "STOP"))
    deadline = time.monotonic() + 60
    while "update starts" not in (tmp_path / "agent.log").read_text():
        assert time.monotonic() < deadline and proc.alive(), (tmp_path / "agent.log").read_text()
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.stop(grace=5.0)  # no SIGTERM: the stop alone must do it
    proc.proc.wait(10)
    took = time.monotonic() - t0
    print(f"stop during a 30 s update took {took:.2f} s")
    assert took < 1.0 and proc.proc.returncode == 0
    assert ("saved", 8) in events and ("status", "stopped", "") in events


def test_ask_the_person_task_waits_for_thumbs_then_is_learned(panel, qtbot, tmp_path):
    """A user task whose checker is "ask", on its own virtual display with its real app: its undecided
    episodes wait in the panel; a thumbs up gives one its outcome, in the database and the agent's curve."""
    import sys
    from pathlib import Path

    app = Path(__file__).parents[1] / "agent" / "apps" / "note_app.py"
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "note.toml").write_text(
        f'name = "note"\ninstruction = "Type hello and press Enter"\ncommand = ["{sys.executable}", "{app}", '
        f'"{tmp_path / "out.txt"}"]\n[window]\ntitle = "Squirrel note"\n[checker]\nkind = "ask"\n')
    ctl, win = panel(tasks="user-note")
    win.show()
    win.tabs.setCurrentWidget(win.live)
    ctl.start()
    qtbot.waitUntil(lambda: len(ctl.live.awaiting) > 0, timeout=120_000)  # the agent declared done: the person decides
    eid = ctl.live.awaiting[0]["id"]
    with AgentDB.open(ctl.home, readonly=True) as db:
        assert db.episode(eid).outcome == "pending"
    win.live._fill_awaiting()
    win.live.awaiting.setCurrentRow(0)
    qtbot.mouseClick(win.live.up, LEFT)
    qtbot.waitUntil(lambda: all(e["id"] != eid for e in ctl.live.awaiting), timeout=20_000)
    with AgentDB.open(ctl.home, readonly=True) as db:
        assert db.episode(eid).outcome == "success"
    ctl.stop()
    qtbot.waitUntil(lambda: not ctl.state.alive, timeout=20_000)
    curve = json.loads((Path(ctl.home) / "curve.json").read_text())
    (run,) = [r for r in curve["runs"] if r["task"] == "user-note"]
    assert run["episodes"] >= 1 and run["final_success"] > 0  # the verdict counted in the agent's own curve
