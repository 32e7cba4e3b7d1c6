"""Drawn widgets (QPainter, no plotting dependency): line charts, the live screen, and the event-loop
latency monitor."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from gui.models import LiveModel

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def colour_for(name: str, names: list[str]) -> QColor:
    return QColor(PALETTE[sorted(names).index(name) % len(PALETTE)] if name in names else PALETTE[0])


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.0e}"


class LineChart(QWidget):
    """Series of (x, y) points, one colour per name, with axes and a legend."""

    def __init__(self, title: str, y_range: tuple[float, float] | None = None, log_y: bool = False, parent=None):
        super().__init__(parent)
        self.title, self.y_range, self.log_y = title, y_range, log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumSize(260, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_series(self, series: dict[str, list[tuple[float, float]]]) -> None:
        self.series = {k: v for k, v in series.items() if v}
        self.update()

    def _y(self, v: float) -> float:
        return math.log10(max(v, 1e-9)) if self.log_y else v

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        left, top, right, bottom = 48, 22, 12, 26
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QColor("#333"))
        f = QFont(p.font())
        f.setBold(True)
        p.setFont(f)
        p.drawText(QRectF(0, 2, self.width(), 18), Qt.AlignmentFlag.AlignHCenter, self.title)
        f.setBold(False)
        f.setPointSizeF(max(6.0, f.pointSizeF() - 1))
        p.setFont(f)
        pts = [pt for s in self.series.values() for pt in s]
        if not pts:
            p.drawRect(plot)
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no data yet")
            return
        xs = [x for x, _ in pts]
        x0, x1 = min(xs), max(xs)
        if x1 <= x0:
            x1 = x0 + 1
        if self.y_range is not None:
            y0, y1 = self.y_range
        else:
            ys = [self._y(y) for _, y in pts]
            y0, y1 = min(ys), max(ys)
            pad = (y1 - y0) * 0.05 or 0.5
            y0, y1 = y0 - pad, y1 + pad

        def to_px(x, y):
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (self._y(y) - y0) / (y1 - y0) * plot.height())

        grid = QPen(QColor("#e4e4e4"))
        for t in nice_ticks(y0, y1):
            yy = plot.bottom() - (t - y0) / (y1 - y0) * plot.height()
            p.setPen(grid)
            p.drawLine(QPointF(plot.left(), yy), QPointF(plot.right(), yy))
            p.setPen(QColor("#555"))
            label = fmt(10 ** t) if self.log_y else fmt(t)
            p.drawText(QRectF(0, yy - 8, left - 4, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
        for t in nice_ticks(x0, x1):
            xx = plot.left() + (t - x0) / (x1 - x0) * plot.width()
            p.setPen(grid)
            p.drawLine(QPointF(xx, plot.top()), QPointF(xx, plot.bottom()))
            p.setPen(QColor("#555"))
            p.drawText(QRectF(xx - 30, plot.bottom() + 2, 60, 14), Qt.AlignmentFlag.AlignHCenter, fmt(t))
        p.drawText(QRectF(plot.right() - 80, plot.bottom() + 12, 80, 14), Qt.AlignmentFlag.AlignRight, "env steps")
        p.setPen(QColor("#999"))
        p.drawRect(plot)
        names = list(self.series)
        p.setClipRect(plot.adjusted(-1, -1, 1, 1))
        for name, s in self.series.items():
            step = max(1, len(s) // int(plot.width()))  # at most about one point per pixel column
            poly = QPolygonF([to_px(x, y) for x, y in s[::step]] + ([to_px(*s[-1])] if step > 1 else []))
            p.setPen(QPen(colour_for(name, names), 1.6))
            p.drawPolyline(poly)
        p.setClipping(False)
        y = plot.top() + 4
        for name in sorted(names):
            p.setPen(QPen(colour_for(name, names), 3))
            p.drawLine(QPointF(plot.left() + 6, y + 7), QPointF(plot.left() + 20, y + 7))
            p.setPen(QColor("#222"))
            p.drawText(QRectF(plot.left() + 24, y, 220, 14), Qt.AlignmentFlag.AlignLeft, name)
            y += 14


class LiveCanvas(QWidget):
    """The agent's task window, scaled up, with its intended action and click heat map drawn over it.
    During a takeover, a person's clicks, drags, scrolls and keys here become actions (`on_action`)."""

    def __init__(self, model: LiveModel, patch: int = 16, parent=None):
        super().__init__(parent)
        self.model, self.patch = model, patch
        self.on_action: Callable[[dict], None] | None = None
        self.on_key: Callable[[object], bool] | None = None
        self._press: tuple[int, int] | None = None
        self._double = False
        self._image: QImage | None = None
        self._image_of = None
        self.setMinimumSize(330, 430)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        model.frame_changed.connect(self.update)
        model.changed.connect(self.update)

    def frame_rect(self) -> QRectF | None:
        f = self.model.frame
        if f is None:
            return None
        h, w = f.shape[:2]
        s = min(self.width() / w, self.height() / h)
        if s >= 1:
            s = max(1, math.floor(s * 2) / 2)  # crisp pixels: whole or half steps
        return QRectF((self.width() - w * s) / 2, (self.height() - h * s) / 2, w * s, h * s)

    def to_frame(self, pos) -> tuple[int, int] | None:
        r, f = self.frame_rect(), self.model.frame
        if r is None or not r.contains(pos):
            return None
        h, w = f.shape[:2]
        return (min(w - 1, int((pos.x() - r.left()) * w / r.width())), min(h - 1, int((pos.y() - r.top()) * h / r.height())))

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#202124"))
        m = self.model
        r = self.frame_rect()
        if r is None:
            p.setPen(QColor("#ddd"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "The agent's screen appears here when it runs.")
            return
        f = m.frame
        if self._image_of is not f:
            f = np.ascontiguousarray(f)
            self._image = QImage(f.data, f.shape[1], f.shape[0], f.strides[0], QImage.Format.Format_RGB888).copy()
            self._image_of = m.frame
        p.drawImage(r, self._image)
        sx = r.width() / f.shape[1]
        sy = r.height() / f.shape[0]
        if m.show_heat and m.heat is not None and not m.demo:
            heat = np.asarray(m.heat, np.float32)
            top = float(heat.max()) or 1.0
            gh, gw = heat.shape
            for i in range(gh):
                for j in range(gw):
                    a = int(170 * heat[i, j] / top)
                    if a > 8:
                        p.fillRect(QRectF(r.left() + j * self.patch * sx, r.top() + i * self.patch * sy,
                                          self.patch * sx, self.patch * sy), QColor(255, 40, 0, a))
        if m.show_action and m.action:
            self._draw_action(p, r, sx, sy, m.action)
        if m.demo or m.takeover == "ready":
            p.setPen(QPen(QColor("#ff9800"), 3))
            p.drawRect(r.adjusted(1, 1, -1, -1))
            self._badge(p, QPointF(r.left() + 4, r.top() + 4), "YOU ARE ACTING" + (f": typing '{m.typed}'" if m.typed else ""),
                        QColor("#ff9800"))

    def _badge(self, p: QPainter, at: QPointF, text: str, colour: QColor) -> None:
        fm = p.fontMetrics()
        box = QRectF(at.x(), at.y(), fm.horizontalAdvance(text) + 10, fm.height() + 6)
        p.fillRect(box, QColor(0, 0, 0, 170))
        p.setPen(colour)
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _draw_action(self, p: QPainter, r: QRectF, sx: float, sy: float, a: dict) -> None:
        from agent.actions import span_text

        kind = a.get("type", "")
        colour = QColor("#00e5ff") if not self.model.demo else QColor("#ff9800")
        if "x" in a:
            c = QPointF(r.left() + (a["x"] + 0.5) * sx, r.top() + (a["y"] + 0.5) * sy)
            p.setPen(QPen(colour, 2.5))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(c, 9, 9)
            p.drawLine(c - QPointF(14, 0), c - QPointF(4, 0))
            p.drawLine(c + QPointF(4, 0), c + QPointF(14, 0))
            p.drawLine(c - QPointF(0, 14), c - QPointF(0, 4))
            p.drawLine(c + QPointF(0, 4), c + QPointF(0, 14))
            if kind == "drag":
                e = QPointF(r.left() + (a["x2"] + 0.5) * sx, r.top() + (a["y2"] + 0.5) * sy)
                path = QPainterPath(c)
                path.lineTo(e)
                p.drawPath(path)
                p.drawEllipse(e, 4, 4)
            self._badge(p, QPointF(min(c.x() + 12, r.right() - 90), max(r.top(), c.y() - 26)), kind.replace("_", " "), colour)
            return
        if kind == "type":
            text = span_text(self.model.instruction, tuple(a.get("span", (0, 0)))) or "?"
            label = f"type '{text}'"
        elif kind == "key":
            label = f"key {a.get('key')}"
        elif kind == "tool":
            label = f"tool {a.get('name', a.get('tool', '?'))}"
        else:
            label = kind
        self._badge(p, QPointF(r.left() + 4, r.bottom() - 28), label, colour)

    # -- a person acting (takeover) -------------------------------------------------------------------------
    def _send(self, action: dict) -> None:
        if self.on_action is not None and self.model.takeover == "ready":
            self.on_action(action)

    def mousePressEvent(self, e) -> None:
        self.setFocus()
        pt = self.to_frame(e.position())
        if pt is None or self.model.takeover != "ready":
            return
        if e.button() == Qt.MouseButton.RightButton:
            self._send({"type": "right_click", "x": pt[0], "y": pt[1]})
        elif e.button() == Qt.MouseButton.LeftButton:
            self._press, self._double = pt, False

    def mouseDoubleClickEvent(self, e) -> None:
        pt = self.to_frame(e.position())
        if pt is not None and e.button() == Qt.MouseButton.LeftButton:
            self._press, self._double = pt, True

    def mouseReleaseEvent(self, e) -> None:
        start, self._press = self._press, None
        if start is None or e.button() != Qt.MouseButton.LeftButton:
            return
        end = self.to_frame(e.position()) or start
        if self._double:
            self._send({"type": "double_click", "x": start[0], "y": start[1]})
        elif abs(end[0] - start[0]) + abs(end[1] - start[1]) > 4:
            self._send({"type": "drag", "x": start[0], "y": start[1], "x2": end[0], "y2": end[1]})
        else:
            self._send({"type": "click", "x": start[0], "y": start[1]})

    def wheelEvent(self, e) -> None:
        pt = self.to_frame(e.position())
        if pt is not None and self.model.takeover == "ready":
            self._send({"type": "scroll_up" if e.angleDelta().y() > 0 else "scroll_down", "x": pt[0], "y": pt[1]})

    def keyPressEvent(self, e) -> None:
        if self.model.takeover == "ready" and self.on_key is not None and self.on_key(e):
            return
        super().keyPressEvent(e)

    def focusNextPrevChild(self, forward: bool) -> bool:
        return False if self.model.takeover == "ready" else super().focusNextPrevChild(forward)  # Tab is for the task


class LatencyMonitor(QObject):
    """How late the UI thread's event loop runs a timer: the panel's responsiveness, measured."""

    def __init__(self, interval_ms: int = 20, keep: int = 3000, parent=None):
        super().__init__(parent)
        self.interval = interval_ms / 1000
        self.samples: deque = deque(maxlen=keep)
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._tick)
        self._last = None
        self._timer.start(interval_ms)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.samples.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def reset(self) -> None:
        self.samples.clear()
        self._last = None

    def stats(self) -> dict:
        s = np.array(self.samples) * 1000
        if not len(s):
            return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {"n": int(len(s)), "p50_ms": float(np.percentile(s, 50)), "p99_ms": float(np.percentile(s, 99)),
                "max_ms": float(s.max())}
