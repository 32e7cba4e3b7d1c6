"""The panel's main window: the agent controls on top, the views in tabs, messages at the bottom."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QTextCharFormat
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QFrame, QHBoxLayout, QLabel, QLineEdit, QMainWindow,
                               QPlainTextEdit, QPushButton, QSpinBox, QTabWidget, QVBoxLayout, QWidget)

from gui.actors_view import ActorsView
from gui.controller import Controller
from gui.curve_view import CurvesView
from gui.live_view import LiveView
from gui.memory_view import MemoryView
from gui.task_view import TasksView
from gui.tool_view import ToolsView
from gui.widgets import LatencyMonitor

STATUS_COLOURS = {"idle": "#666", "starting": "#a67c00", "running": "#1b7f1b", "paused": "#a67c00",
                  "stopping": "#a67c00", "stopped": "#666", "finished": "#1b5fa6", "crashed": "#b00020"}


class ControlBar(QFrame):
    """Agent home, start / pause / resume / stop, status and speed."""

    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        self.home = QLineEdit(str(ctl.home))
        self.home.setToolTip("The agent home: its database, checkpoints, curve and logs. A new folder starts a new agent.")
        self.home.editingFinished.connect(self._home_edited)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.start_btn, self.pause_btn = QPushButton("Start"), QPushButton("Pause")
        self.resume_btn, self.stop_btn = QPushButton("Resume"), QPushButton("Stop")
        self.start_btn.clicked.connect(ctl.start)
        self.pause_btn.clicked.connect(ctl.pause)
        self.resume_btn.clicked.connect(ctl.resume)
        self.stop_btn.clicked.connect(ctl.stop)
        self.actors = QSpinBox(minimum=0, maximum=256, value=ctl.options.actors)
        self.actors.setToolTip("Ray actors: each acts on its own virtual display with a copy of the policy and sends "
                               "its episodes to the agent, which learns (0: the single-process loop, with live view, "
                               "takeover and pause between steps). More options, e.g. --ray-address, go in the agent "
                               "options.")
        self.actors.valueChanged.connect(lambda n: setattr(ctl.options, "actors", n))
        self.status = QLabel()
        self.counters = QLabel()
        self.browse_btn = browse
        row1 = QHBoxLayout()
        row1.addWidget(QLabel("Agent home"))
        row1.addWidget(self.home, 1)
        row1.addWidget(browse)
        row1.addWidget(QLabel("Ray actors"))
        row1.addWidget(self.actors)
        for b in (self.start_btn, self.pause_btn, self.resume_btn, self.stop_btn):
            row1.addWidget(b)
        row2 = QHBoxLayout()
        row2.addWidget(self.status, 1)
        row2.addWidget(self.counters)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.addLayout(row1)
        lay.addLayout(row2)
        # the crash banner
        self.banner = QFrame()
        self.banner.setStyleSheet("QFrame { background: #fde7e9; border: 1px solid #b00020; }")
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.restart_btn = QPushButton("Restart from the last checkpoint")
        self.restart_btn.clicked.connect(ctl.start)
        bl = QHBoxLayout(self.banner)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(self.restart_btn)
        lay.addWidget(self.banner)
        ctl.state.changed.connect(self.refresh)
        self.refresh()

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Agent home (an empty folder starts a new agent)", str(self.ctl.home))
        if d:
            self.home.setText(d)
            self._home_edited()

    def _home_edited(self) -> None:
        text = self.home.text().strip()
        if text and Path(text).expanduser() != self.ctl.home:
            if not self.ctl.set_home(text):
                self.home.setText(str(self.ctl.home))

    def refresh(self) -> None:
        s = self.ctl.state
        st = s.status
        self.start_btn.setEnabled(not s.alive)
        self.start_btn.setText("Restart" if st in ("stopped", "finished", "crashed") else "Start")
        self.pause_btn.setEnabled(st == "running")
        self.resume_btn.setEnabled(st == "paused")
        self.stop_btn.setEnabled(st in ("starting", "running", "paused"))
        self.home.setEnabled(not s.alive)
        self.browse_btn.setEnabled(not s.alive)
        self.actors.setEnabled(not s.alive)
        label = {"idle": "Agent not started", "starting": "Starting the agent…", "running": "Agent running",
                 "paused": "Agent paused", "stopping": "Stopping…", "stopped": "Agent stopped",
                 "finished": "Agent finished its step budget", "crashed": "Agent process died"}[st]
        on = f" on {s.actors} Ray actors" if s.actors and s.alive else ""
        self.status.setText(f"<b style='color:{STATUS_COLOURS[st]}'>{label}{on}</b>" + (f" — {s.detail}" if s.detail else ""))
        self.counters.setText(f"{s.env_steps:,} env steps · {s.episodes:,} episodes · {s.updates:,} updates · "
                              f"{s.steps_per_s:.1f} steps/s · {s.updates_per_s:.2f} updates/s")
        self.banner.setVisible(st == "crashed")
        if st == "crashed":
            ck = self.ctl.store.checkpoints()
            where = f"its last checkpoint ({ck[-1][0]:,} env steps)" if ck else "scratch (no checkpoint was saved yet)"
            self.banner_text.setText(f"<b>The agent process died</b> ({s.detail.removeprefix('the agent process died ')}). "
                                     f"Restarting continues from {where}; the log is {self.ctl.store.log_path}.")


class MainWindow(QMainWindow):
    def __init__(self, ctl: Controller, tasks_dir: Path | None = None):
        super().__init__()
        self.ctl = ctl
        self.setWindowTitle("Squirrel")
        self.control = ControlBar(ctl)
        self.tabs = QTabWidget()
        self.tasks = TasksView(ctl, tasks_dir)
        self.live = LiveView(ctl)
        self.curves = CurvesView(ctl)
        self.tools = ToolsView(ctl)
        self.memory = MemoryView(ctl)
        self.actors = ActorsView(ctl)
        for w, name in ((self.tasks, "Tasks"), (self.live, "Live"), (self.curves, "Curves"), (self.actors, "Actors"),
                        (self.tools, "Tools"), (self.memory, "Memory")):
            self.tabs.addTab(w, name)
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.control)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.messages = QPlainTextEdit(readOnly=True)
        self.messages.setMaximumBlockCount(2000)
        dock = QDockWidget("Messages from the agent and the panel")
        dock.setObjectName("messages")
        dock.setWidget(self.messages)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.resizeDocks([dock], [110], Qt.Orientation.Vertical)
        self.latency = LatencyMonitor(parent=self)
        self.latency_label = QLabel()
        self.statusBar().addPermanentWidget(self.latency_label)
        self._lat_timer = QTimer(self, interval=1000)
        self._lat_timer.timeout.connect(self._show_latency)
        self._lat_timer.start()
        ctl.state.message.connect(self._message)
        for _, level, text in ctl.state.messages:
            self._message(level, text)
        self.resize(1280, 860)

    def save_screenshots(self, folder: str | Path) -> list[Path]:
        """A PNG of each tab (panel-<tab>.png) in `folder`."""
        from PySide6.QtWidgets import QApplication

        out, d = [], Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        current = self.tabs.currentIndex()
        for i in range(self.tabs.count()):
            self.tabs.setCurrentIndex(i)
            QApplication.processEvents()
            p = d / f"panel-{self.tabs.tabText(i).lower()}.png"
            self.grab().save(str(p))
            out.append(p)
        self.tabs.setCurrentIndex(current)
        return out

    def _message(self, level: str, text: str) -> None:
        fmt = QTextCharFormat()
        fmt.setForeground(QColor("#b00020" if level == "error" else "#222"))
        cur = self.messages.textCursor()
        cur.movePosition(cur.MoveOperation.End)
        cur.insertText(f"{time.strftime('%H:%M:%S')}  {'error: ' if level == 'error' else ''}{text}\n", fmt)
        self.messages.setTextCursor(cur)
        self.messages.ensureCursorVisible()
        if level == "error":
            self.statusBar().showMessage(text.splitlines()[0], 8000)

    def _show_latency(self) -> None:
        s = self.latency.stats()
        self.latency_label.setText(f"UI event-loop latency p99 {s['p99_ms']:.1f} ms (max {s['max_ms']:.0f} ms)")

    before_close = None  # called first when the window closes (e.g. to take screenshots)

    def closeEvent(self, e) -> None:
        if self.before_close is not None:
            self.before_close()
        self.ctl.shutdown()
        super().closeEvent(e)
