"""The Curves tab: success rate and return per task over env steps, and the world model's error, live."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGridLayout, QLabel, QWidget

from gui.controller import Controller
from gui.widgets import LineChart


class CurvesView(QWidget):
    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        w = ctl.curves.window
        self.success = LineChart(f"Success rate (last {w} episodes per task)", (0.0, 1.0))
        self.ret = LineChart(f"Mean return (last {w} episodes per task)")
        self.wm = LineChart("World-model error (each update)", log_y=True)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        lay = QGridLayout(self)
        lay.addWidget(self.success, 0, 0)
        lay.addWidget(self.ret, 0, 1)
        lay.addWidget(self.wm, 1, 0)
        lay.addWidget(self.summary, 1, 1)
        # repaint at most 5 times a second, however fast episodes arrive
        self._timer = QTimer(self, singleShot=True, interval=200)
        self._timer.timeout.connect(self.refresh)
        ctl.curves.changed.connect(lambda: self._timer.isActive() or self._timer.start())
        self.refresh()

    def refresh(self) -> None:
        c = self.ctl.curves
        self.success.set_series(c.success)
        self.ret.set_series(c.ret)
        self.wm.set_series({"world model": c.wm})
        lines = [f"<b>{t}</b>: {c.episodes[t]} episodes, success {c.rate(t):.0%} over the last {len(c._recent[t])}"
                 for t in sorted(c.episodes)]
        self.summary.setText("<br>".join(lines) or "No episodes in this home yet.")
