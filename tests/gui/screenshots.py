"""Screenshots of each panel view with real data, on Xvfb (run by hand; not a test):

    .venv/bin/python tests/gui/screenshots.py OUT_DIR [--seconds 90]

1. the agent learns fake-type on the fake desktop while a "person" (this script, through the
   panel's takeover) gives ten demonstrations (a stray key, then type the word and press Enter);
   tool mining then finds their routine;
2. the agent (same home, resumed) learns playground tasks on its own virtual display;
3. a PNG of each tab, from a real X window (the xcb platform on a private Xvfb).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--tasks", default="click-shape,click-button,focus-text")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from agent.display import VirtualDisplay

    vd = VirtualDisplay(width=1400, height=960).start()
    vd.activate()
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    os.environ["SQUIRREL_TASKS_DIR"] = str(out / "tasks")
    from PySide6.QtWidgets import QApplication

    app = QApplication(["squirrel panel"])
    from gui.app import PanelConfig, build

    ctl, win = build(PanelConfig(home=str(out / "home"), tasks="fake-type", tensorboard=False, checkpoint_every=500,
                                 tasks_dir=str(out / "tasks")))
    win.show()

    def wait(pred, timeout, what):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}; log: {ctl.store.log_path}")
            app.processEvents()
            time.sleep(0.01)

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    # 1. fake-type with four demonstrations
    ctl.start()
    wait(lambda: ctl.state.status == "running" and ctl.state.episodes >= 5, 120, "the agent")
    def demos_done():
        return sum("your demonstration" in m for _, _, m in ctl.state.messages)

    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    win.tabs.setCurrentWidget(win.live)
    canvas = win.live.canvas
    qtbot_keys = [Qt.Key.Key_Tab, Qt.Key.Key_Down, Qt.Key.Key_Home, Qt.Key.Key_End, Qt.Key.Key_Up, Qt.Key.Key_Left]
    QTest.mouseClick(win.live.takeover_btn, Qt.MouseButton.LeftButton)
    for i in range(10):  # a person at the keyboard, through the live view
        wait(lambda: ctl.live.takeover == "ready" and ctl.live.demo, 60, "a demonstration")
        word = ctl.live.instruction.split()[1]
        QTest.keyClick(canvas, qtbot_keys[i % len(qtbot_keys)])  # a stray key first
        spin(0.3)
        QTest.keyClicks(canvas, word)
        spin(0.3)
        if i == 0:
            win.grab().save(str(out / "panel-live-takeover.png"))
        n = demos_done()
        QTest.keyClick(canvas, Qt.Key.Key_Return)  # sends the typed word (a span of the instruction), then Return
        wait(lambda: demos_done() > n, 30, "the demonstration's end")
    QTest.mouseClick(win.live.takeover_btn, Qt.MouseButton.LeftButton)  # hand back
    wait(lambda: ctl.live.takeover == "off", 30, "takeover off")
    spin(10)
    ctl.stop()
    wait(lambda: ctl.state.status == "stopped", 10, "stop")
    win.tools.mine()
    wait(lambda: win.tools.model.rowCount() > 0, 20, "mined tools")
    first = win.tools.model.tools[0]
    win.tools.act("approve", first.id)
    spin(1)

    # 2. the playground, resumed from the same home
    ctl.assignment.clear()
    for t in args.tasks.split(","):
        ctl.assignment.add(t)
    ctl.start()
    wait(lambda: ctl.state.status == "running", 180, "the agent on the playground")
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        spin(1)
    win.latency.reset()
    win.tabs.setCurrentWidget(win.live)
    spin(5)
    lat = win.latency.stats()
    # a takeover under way makes a good Live shot too, but the agent acting is the point here
    win.tabs.setCurrentWidget(win.memory)
    spin(1)
    demo_row = next(r for r, e in enumerate(win.memory.episodes) if e.instruction.startswith("[demonstration]"))
    win.memory.table.selectRow(demo_row)
    spin(1)
    shots = win.save_screenshots(out)
    win.tabs.setCurrentWidget(win.live)
    ctl.live.set_overlays(heat=False)
    spin(0.5)
    win.grab().save(str(out / "panel-live-no-heatmap.png"))
    ctl.live.set_overlays(heat=True)
    info = {"latency_while_learning": lat, "fps": ctl.live.fps, "env_steps": ctl.state.env_steps,
            "episodes": ctl.state.episodes, "steps_per_s": ctl.state.steps_per_s, "shots": [str(p) for p in shots],
            "tools": [(t.name, t.status) for t in win.tools.model.tools]}
    (out / "screenshots.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    ctl.stop()
    wait(lambda: ctl.state.status in ("stopped", "crashed"), 15, "stop")
    win.close()
    vd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
