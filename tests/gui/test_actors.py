"""The panel runs the agent with Ray actors (a local Ray, the fake desktop, the tiny encoder): the Actors tab
fills with one row per actor whose episodes rise, with the learner's updates/s and policy lag; a killed actor
is restarted by Ray and its restart count goes up; pause stops new episodes; the live view and takeover say
why they are off; stop ends the learner and Ray, and no process the agent started is left."""

import os
import signal
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from agent.distributed import alive, descendants

pytestmark = pytest.mark.slow
LEFT = Qt.MouseButton.LeftButton
EPISODES, RESTARTS, PID = 3, 5, 2  # table columns


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_panel_shows_two_ray_actors_and_stops_them(panel, qtbot):
    tiny = Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json"
    ctl, win = panel(agent_args=f"--agent.encoder {tiny} --agent.threads 1 --agent.rollout 32 --agent.ppo.epochs 1 "
                                "--scale.object-store-mb 128")
    win.show()
    win.tabs.setCurrentWidget(win.actors)
    win.control.actors.setValue(2)
    qtbot.mouseClick(win.control.start_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "running" and len(ctl.actors.actors) == 2
                    and all(a["episodes"] >= 2 for a in ctl.actors.actors), timeout=120_000)
    table = win.actors.table_model
    cell = lambda r, c: table.data(table.index(r, c))
    assert table.rowCount() == 2 and win.actors.table.isVisible()
    first = [int(cell(r, EPISODES)) for r in range(2)]
    qtbot.waitUntil(lambda: all(int(cell(r, EPISODES)) > first[r] for r in range(2)), timeout=30_000)
    qtbot.waitUntil(lambda: ctl.actors.policy_lag is not None, timeout=30_000)  # after the learner's first update
    text = win.actors.summary.text()
    assert "2 Ray actors" in text and "updates/s" in text and "policy lag median" in text, text
    assert ctl.actors.updates_per_s > 0 and all(a["node"] and a["steps_per_s"] > 0 for a in ctl.actors.actors)
    assert "on 2 Ray actors" in win.control.status.text()

    # no live view and no takeover with actors: the window says why, and a takeover is refused
    assert "No live view with 2 Ray actors" in win.live.info.text()
    assert not win.live.takeover_btn.isEnabled() and "Not with Ray actors" in win.live.takeover_note.text()
    ctl.takeover(True)
    assert ctl.live.takeover == "off" and "no takeover with Ray actors" in ctl.state.messages[-1][2]

    # everything the agent started: Ray's processes, the actors, their watchdogs
    procs = {p for p, _ in descendants(ctl.proc.pid)}
    assert any("raylet" in cmdline(p) for p in procs) and len(procs) >= 5

    # a killed actor: Ray restarts it (a new process) and its restart count goes up
    pid0 = ctl.actors.actors[0]["pid"]
    os.kill(pid0, signal.SIGKILL)
    qtbot.waitUntil(lambda: ctl.actors.actors[0]["restarts"] == 1 and ctl.actors.actors[0]["pid"] != pid0,
                    timeout=90_000)
    assert cell(0, RESTARTS) == "1" and cell(0, PID) == str(ctl.actors.actors[0]["pid"]) and cell(1, RESTARTS) == "0"
    assert ctl.actors.actors[0]["dropped_episodes"] == 1 and cell(0, 8) == "acting"

    # pause: no new episode reaches the learner until resumed
    qtbot.mouseClick(win.control.pause_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "paused", timeout=10_000)
    qtbot.wait(1200)  # heartbeats (every 0.5 s while paused) carry the true counts
    paused_at = ctl.state.env_steps, [a["episodes"] for a in ctl.actors.actors]
    qtbot.wait(1500)
    assert (ctl.state.env_steps, [a["episodes"] for a in ctl.actors.actors]) == paused_at
    qtbot.mouseClick(win.control.resume_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.env_steps > paused_at[0], timeout=20_000)

    # stop: the learner's loop ends, a checkpoint is saved, the actors and Ray are shut down
    procs |= {p for p, _ in descendants(ctl.proc.pid)}
    t0 = time.monotonic()
    qtbot.mouseClick(win.control.stop_btn, LEFT)
    qtbot.waitUntil(lambda: ctl.state.status == "stopped", timeout=15_000)
    took = time.monotonic() - t0
    log = ctl.store.log_path.read_text()
    closed = [ln for ln in log.splitlines() if "closed the actors and Ray in" in ln]
    print(f"\nstop with 2 Ray actors took {took:.2f} s to the process's exit ({closed[-1] if closed else '?'})")
    assert ctl.proc.proc.returncode == 0 and ctl.store.checkpoints() and closed, log[-3000:]
    assert took < 2.0  # measured 0.85 s here (0.68 s of it closing the actors and Ray)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.1)
    left = {p: cmdline(p) for p in procs if alive(p)}
    assert not left, left
    assert "The run is over" in win.actors.summary.text() and table.rowCount() == 2
