"""The playground host: one long-running Qt process that shows every playground task in one window.

It is an *app the agent acts on*, not part of the agent: it runs as its own process on the agent's
display, and the env talks to it over a local socket with JSON lines. `reset` re-randomises the
window contents in place (no process start per episode); the host judges success from the widgets'
real state, and answers oracle queries from its ground-truth geometry.

Run: python -m playground.host --socket PATH [--x 40 --y 40]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import traceback

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QApplication, QLabel, QWidget

from playground.tasks import TASKS, Task

SIZES = {"small": (160, 210, 50), "large": (320, 420, 60)}  # width, height, header height


class TaskWindow(QWidget):
    def __init__(self, x: int, y: int):
        super().__init__(None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint)
        self.setWindowTitle("Squirrel playground")
        self.setAutoFillBackground(True)
        self.setStyleSheet("TaskWindow { background: white; }")
        self.origin = QPoint(x, y)
        self.header = QLabel(self)
        self.header.setWordWrap(True)
        self.header.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.header.setStyleSheet("background: #ffff66; color: black; padding: 3px;")
        self.body: QWidget | None = None
        self.task: Task | None = None
        self.done = False
        self.success: bool | None = None
        self.size_name = "small"

    def reset(self, name: str, seed: int, size: str) -> dict:
        if name not in TASKS:
            raise ValueError(f"unknown playground task {name!r}")
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r} (small, large)")
        w, h, hh = SIZES[size]
        for popup in QApplication.topLevelWidgets():
            if popup is not self and popup.isVisible():
                popup.close()
        if self.body is not None:
            self.body.hide()
            self.body.deleteLater()
        self.size_name = size
        self.setFixedSize(w, h)
        self.move(self.origin)
        self.header.setGeometry(0, 0, w, hh)
        self.body = QWidget(self)
        self.body.setGeometry(0, hh, w, h - hh)
        self.done, self.success = False, None
        self.task = TASKS[name](self.body, random.Random(f"{name}:{seed}:{size}"), self._finish)
        instruction = self.task.instruction = self.task.build()
        self.header.setText(instruction)
        self.body.show()
        self.show()
        self.raise_()
        self.activateWindow()
        if self.task.initial_focus is not None:
            self.task.initial_focus.setFocus()
        else:
            self.body.setFocus()
        return {"instruction": instruction, "window": [self.origin.x(), self.origin.y(), w, h],
                "max_steps": self.task.max_steps}

    def _finish(self, success: bool) -> None:
        if not self.done:
            self.done, self.success = True, bool(success)

    def status(self) -> dict:
        return {"done": self.done, "success": self.success}

    def to_window(self, widget: QWidget, p: QPoint | None = None) -> list[int]:
        """A point of any widget (popups included) in task-window coordinates."""
        g = widget.mapToGlobal(p if p is not None else widget.rect().center())
        return [g.x() - self.origin.x(), g.y() - self.origin.y()]


class Host:
    def __init__(self, app: QApplication, window: TaskWindow, socket_path: str):
        self.app, self.window = app, window
        self.server = QLocalServer()
        QLocalServer.removeServer(socket_path)
        if not self.server.listen(socket_path):
            raise SystemExit(f"playground: cannot listen on {socket_path}: {self.server.errorString()}")
        self.server.newConnection.connect(self._accept)
        self.buffers: dict[QLocalSocket, bytes] = {}

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            self.buffers[sock] = b""
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(lambda s=sock: self.buffers.pop(s, None))

    def _read(self, sock: QLocalSocket) -> None:
        self.buffers[sock] += bytes(sock.readAll().data())
        while b"\n" in self.buffers.get(sock, b""):
            line, self.buffers[sock] = self.buffers[sock].split(b"\n", 1)
            try:
                reply = {"ok": True, **self.handle(json.loads(line))}
            except Exception as e:  # noqa: BLE001 - every failure goes back to the client
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
            sock.write(json.dumps(reply).encode() + b"\n")
            sock.flush()

    def _settle(self) -> None:
        # Deliver pending X input, repaint, and make sure the X server has the new pixels.
        QGuiApplication.sync()
        self.app.processEvents()
        QGuiApplication.sync()

    def handle(self, msg: dict) -> dict:
        cmd, w = msg.get("cmd"), self.window
        if cmd == "ping":
            return {}
        if cmd == "tasks":
            return {"tasks": [{"name": n, "description": t.description, "max_steps": t.max_steps}
                              for n, t in TASKS.items()]}
        if cmd == "reset":
            out = w.reset(msg["task"], int(msg.get("seed", 0)), msg.get("size", "small"))
            self._settle()
            return out
        if w.task is None:
            raise RuntimeError("no task: send reset first")
        if cmd == "sync":
            self._settle()
            return w.status()
        if cmd == "status":
            return w.status()
        if cmd == "judge":  # the agent declared done: judge the state as it is
            self._settle()
            w._finish(w.task.judge())
            return w.status()
        if cmd == "oracle":
            self._settle()
            return {"action": None if w.done else w.task.oracle(w.to_window)}
        if cmd == "geometry":
            return {"targets": w.task.geometry(w.to_window)}
        if cmd == "quit":
            self.app.quit()
            return {}
        raise ValueError(f"unknown command {cmd!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="playground-host")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--x", type=int, default=40)
    ap.add_argument("--y", type=int, default=40)
    args = ap.parse_args(argv)
    app = QApplication(sys.argv[:1] + ["-platform", "xcb"])
    app.setStyle("Fusion")
    font = QFont("DejaVu Sans")
    font.setPixelSize(11)
    font.setHintingPreference(QFont.HintingPreference.PreferFullHinting)
    app.setFont(font)
    for effect in (Qt.UIEffect.UI_AnimateMenu, Qt.UIEffect.UI_FadeMenu, Qt.UIEffect.UI_AnimateCombo,
                   Qt.UIEffect.UI_AnimateTooltip, Qt.UIEffect.UI_FadeTooltip, Qt.UIEffect.UI_AnimateToolBox):
        app.setEffectEnabled(effect, False)
    app.setCursorFlashTime(0)  # a blinking caret would keep the screen from settling
    window = TaskWindow(args.x, args.y)
    host = Host(app, window, args.socket)  # noqa: F841 - kept alive by the event loop
    print("ready", flush=True)
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
