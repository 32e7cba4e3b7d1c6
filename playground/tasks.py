"""The playground tasks: real Qt widgets, randomised by a seed, judged from their real state.

Each task builds its widgets inside `body`, returns its instruction, calls `finish(success)` when a
terminal event happens (a button pressed, Enter in a field, a menu item chosen), and answers
`oracle(at)`: the next action that solves it, in task-window pixels (`at(widget, point=None)` maps a
widget point there). The oracle reacts to the current state, so it also solves half-done tasks.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Callable

from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtGui import QColor, QPainter, QPolygon
from PySide6.QtWidgets import (QApplication, QCheckBox, QComboBox, QFrame, QLabel, QLineEdit, QListWidget,
                               QMenu, QMenuBar, QPushButton, QRadioButton, QSlider, QStyle,
                               QStyleOptionSlider, QTabWidget, QWidget)

from agent.actions import find_span

WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "robot", "candle", "forest", "mango",
         "silver", "rocket", "garden", "window", "pepper", "castle", "dragon", "orange", "planet", "basket",
         "pencil", "marble", "coffee", "button", "jacket", "violet", "anchor", "falcon", "meadow", "copper",
         "harbor", "island", "jungle", "kettle", "ladder", "magnet", "nickel", "oyster", "parrot")
COLOURS = {"red": "#e02020", "green": "#20a020", "blue": "#2040e0", "yellow": "#e0c000", "black": "#202020"}
SHAPES = ("circle", "square", "triangle")

At = Callable[..., list]


def click(p: list, kind: str = "click") -> dict:
    return {"type": kind, "x": int(p[0]), "y": int(p[1])}


def key(k: str) -> dict:
    return {"type": "key", "key": k}


class Task(ABC):
    name = ""
    description = ""
    max_steps = 4
    initial_focus: QWidget | None = None

    def __init__(self, body: QWidget, rng: random.Random, finish: Callable[[bool], None]):
        self.body, self.rng, self.finish = body, rng, finish
        self.W, self.H = body.width(), body.height()
        self.instruction = ""
        self.named: dict[str, QWidget] = {}

    @abstractmethod
    def build(self) -> str:
        """Create the widgets; return the instruction."""

    def judge(self) -> bool:
        """Is the goal met right now (used when the agent declares done)?"""
        return False

    @abstractmethod
    def oracle(self, at: At) -> dict | None:
        """The next action that solves the task from the current state."""

    def geometry(self, at: At) -> dict:
        return {n: at(w) for n, w in self.named.items() if w.isVisible()}

    # -- helpers -------------------------------------------------------------------------------
    def words(self, n: int) -> list[str]:
        return self.rng.sample(WORDS, n)

    def place(self, widgets: list[QWidget], top: int = 4, margin: int = 4) -> list[QWidget]:
        """Random non-overlapping positions inside the body (below `top`), in order; a widget that
        finds no free spot is removed. Returns the widgets placed."""
        taken: list[QRect] = []
        placed = []
        for w in widgets:
            w.adjustSize()
            ww, hh = w.width(), w.height()
            for _ in range(300):
                r = QRect(self.rng.randint(margin, self.W - ww - margin), self.rng.randint(top, self.H - hh - margin), ww, hh)
                if not any(r.adjusted(-3, -3, 3, 3).intersects(t) for t in taken):
                    taken.append(r)
                    w.setGeometry(r)
                    placed.append(w)
                    break
            else:
                w.hide()
                w.deleteLater()
        return placed

    def stack(self, widgets: list[QWidget], x: int, y: int, gap: int = 4) -> int:
        for w in widgets:
            w.adjustSize()
            w.move(x, y)
            y += w.height() + gap
        return y

    def submit_button(self, y: int | None = None) -> QPushButton:
        b = QPushButton("Submit", self.body)
        b.adjustSize()
        b.move(self.rng.randint(4, self.W - b.width() - 4), y if y is not None else self.H - b.height() - 6)
        b.clicked.connect(lambda: self.finish(self.judge()))
        self.named["submit"] = b
        return b

    def span(self, text: str) -> list[int]:
        return list(find_span(self.instruction, text))

    def fill(self, at: At, field: QLineEdit, text: str) -> dict | None:
        """Next action to make `field` hold `text` (click it, select all, type), or None when it does."""
        if field.text() == text:
            return None
        if not field.hasFocus():
            return click(at(field))
        if field.text() and field.selectedText() != field.text():
            return key("ctrl+a")
        return {"type": "type", "span": self.span(text)}


class ClickButton(Task):
    name, description, max_steps = "click-button", "click the button with the named label among several", 3

    def build(self) -> str:
        labels = self.words(self.rng.randint(2, 5))
        self.target = labels[0]
        buttons = []
        for label in labels:
            b = QPushButton(label, self.body)
            b.clicked.connect(lambda _=False, s=label: self.finish(s == self.target))
            buttons.append(b)
        for b in self.place(buttons):  # the target first, so it always finds a spot
            self.named[b.text()] = b
        return f'Click the "{self.target}" button.'

    def oracle(self, at: At) -> dict:
        return click(at(self.named[self.target]))


class ShapeCanvas(QWidget):
    def __init__(self, parent: QWidget, shapes: list[tuple[str, str, QRect]], on_click: Callable[[int], None]):
        super().__init__(parent)
        self.shapes, self.on_click = shapes, on_click

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        for colour, shape, r in self.shapes:
            p.setBrush(QColor(COLOURS[colour]))
            p.setPen(Qt.PenStyle.NoPen)
            if shape == "circle":
                p.drawEllipse(r)
            elif shape == "square":
                p.drawRect(r)
            else:
                p.drawPolygon(QPolygon([QPoint(r.center().x(), r.top()), r.bottomLeft(), r.bottomRight()]))

    def mousePressEvent(self, e) -> None:
        pos = e.position().toPoint()
        for i, (_, _, r) in enumerate(self.shapes):
            if r.contains(pos):
                self.on_click(i)
                return


class ClickShape(Task):
    name, description, max_steps = "click-shape", "click the shape of the named colour and kind", 3

    def build(self) -> str:
        kinds = [(c, s) for c in COLOURS for s in SHAPES]
        chosen = self.rng.sample(kinds, self.rng.randint(3, 5))
        size = self.rng.randint(18, 26) * self.W // 160
        rects: list[QRect] = []
        for _ in chosen:
            for _ in range(500):
                r = QRect(self.rng.randint(4, self.W - size - 4), self.rng.randint(4, self.H - size - 4), size, size)
                if not any(r.adjusted(-4, -4, 4, 4).intersects(t) for t in rects):
                    break
            rects.append(r)
        self.shapes = [(c, s, r) for (c, s), r in zip(chosen, rects)]
        self.canvas = ShapeCanvas(self.body, self.shapes, lambda i: self.finish(i == 0))
        self.canvas.setGeometry(0, 0, self.W, self.H)
        colour, shape, _ = self.shapes[0]
        return f"Click the {colour} {shape}."

    def oracle(self, at: At) -> dict:
        r = self.shapes[0][2]
        c = r.center() if self.shapes[0][1] != "triangle" else QPoint(r.center().x(), r.top() + r.height() * 2 // 3)
        return click(at(self.canvas, c))

    def geometry(self, at: At) -> dict:
        return {"target": at(self.canvas, self.shapes[0][2].center())}


class ClickCheckboxes(Task):
    name, description, max_steps = "click-checkboxes", "tick the named checkboxes, then Submit", 6

    def build(self) -> str:
        labels = self.words(self.rng.randint(3, 5))
        self.want = set(labels[: self.rng.randint(1, 3)])
        self.rng.shuffle(labels)
        self.boxes = [QCheckBox(w, self.body) for w in labels]
        for b in self.boxes:
            self.named[b.text()] = b
        self.stack(self.boxes, self.rng.randint(6, 30), self.rng.randint(4, 12), gap=self.rng.randint(2, 6))
        self.submit_button()
        names = [w for w in labels if w in self.want]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"Select {listed}, then click Submit."

    def judge(self) -> bool:
        return {b.text() for b in self.boxes if b.isChecked()} == self.want

    def oracle(self, at: At) -> dict:
        for b in self.boxes:
            if b.isChecked() != (b.text() in self.want):
                return click(at(b, QPoint(8, b.height() // 2)))
        return click(at(self.named["submit"]))


class EnterText(Task):
    name, description, max_steps = "enter-text", "type the given word into the (focused) field and press Enter", 3

    def build(self) -> str:
        self.word = self.words(1)[0]
        self.field = QLineEdit(self.body)
        self.field.setGeometry(self.rng.randint(4, 40), self.rng.randint(20, 100), self.W - 50, 24)
        self.field.returnPressed.connect(lambda: self.finish(self.judge()))
        self.initial_focus = self.field
        self.named["field"] = self.field
        return f'Type "{self.word}" in the field and press Enter.'

    def judge(self) -> bool:
        return self.field.text() == self.word

    def oracle(self, at: At) -> dict:
        return self.fill(at, self.field, self.word) or key("Return")


class FocusText(Task):
    name, description, max_steps = "focus-text", "click the named one of several fields, type the word, press Enter", 4
    LABELS = ("Name", "City", "Email", "Phone")

    def build(self) -> str:
        labels = self.rng.sample(self.LABELS, self.rng.randint(2, 3))
        self.word, self.target = self.words(1)[0], labels[0]
        self.rng.shuffle(labels)
        y = self.rng.randint(4, 20)
        self.fields: dict[str, QLineEdit] = {}
        for label in labels:
            lab = QLabel(label, self.body)
            lab.move(6, y)
            f = QLineEdit(self.body)
            f.setGeometry(6, y + 14, self.W - 20, 22)
            f.returnPressed.connect(lambda: self.finish(self.judge()))
            self.fields[label] = self.named[label] = f
            y += 44
        return f'Enter "{self.word}" in the {self.target} field and press Enter.'

    def judge(self) -> bool:
        return all(f.text() == (self.word if n == self.target else "") for n, f in self.fields.items())

    def oracle(self, at: At) -> dict:
        return self.fill(at, self.fields[self.target], self.word) or key("Return")


class ChooseRadio(Task):
    name, description, max_steps = "choose-radio", "choose the named radio option, then Submit", 3

    def build(self) -> str:
        labels = self.words(self.rng.randint(2, 4))
        self.target = labels[0]
        self.rng.shuffle(labels)
        self.radios = [QRadioButton(w, self.body) for w in labels]
        for r in self.radios:
            self.named[r.text()] = r
        self.stack(self.radios, self.rng.randint(6, 40), self.rng.randint(4, 16), gap=self.rng.randint(2, 8))
        self.submit_button()
        return f"Choose {self.target} and click Submit."

    def judge(self) -> bool:
        return any(r.isChecked() and r.text() == self.target for r in self.radios)

    def oracle(self, at: At) -> dict:
        r = self.named[self.target]
        return click(at(self.named["submit"])) if r.isChecked() else click(at(r, QPoint(8, r.height() // 2)))


class ChooseCombo(Task):
    name, description, max_steps = "choose-combo", "pick the named item from a combo box, then Submit", 4

    def build(self) -> str:
        labels = self.words(self.rng.randint(3, 5))
        self.target = self.rng.choice(labels[1:])
        self.combo = QComboBox(self.body)
        self.combo.addItems(labels)
        self.combo.setGeometry(self.rng.randint(4, 40), self.rng.randint(4, 20), 90, 22)
        self.named["combo"] = self.combo
        self.submit_button()
        return f"Pick {self.target} from the list and click Submit."

    def judge(self) -> bool:
        return self.combo.currentText() == self.target

    def oracle(self, at: At) -> dict:
        view = self.combo.view()
        if view.isVisible():
            idx = self.combo.findText(self.target)
            return click(at(view.viewport(), view.visualRect(view.model().index(idx, 0)).center()))
        if self.combo.currentText() != self.target:
            return click(at(self.combo))
        return click(at(self.named["submit"]))


class ClickTab(Task):
    name, description, max_steps = "click-tab", "open the named tab, then click the named button in it", 3

    def build(self) -> str:
        names = self.words(self.rng.randint(2, 3))
        labels = self.words(8)
        self.tabs = QTabWidget(self.body)
        self.tabs.setGeometry(2, 2, self.W - 4, self.H - 4)
        self.buttons: dict[str, tuple[int, QPushButton]] = {}
        for i, name in enumerate(names):
            page = QWidget()
            self.tabs.addTab(page, name)
            for j in range(2):
                label = labels.pop()
                b = QPushButton(label, page)
                b.adjustSize()
                b.move(self.rng.randint(4, self.W - b.width() - 12), 8 + j * 40 + self.rng.randint(0, 20))
                b.clicked.connect(lambda _=False, s=label: self.finish(s == self.target))
                self.buttons[label] = (i, b)
        while len(names) > 2 and self.tabs.tabBar().sizeHint().width() > self.W - 8:
            # every tab must show in full (no scroll arrows): drop the last one
            self.tabs.removeTab(len(names) - 1)
            names.pop()
            self.buttons = {k: v for k, v in self.buttons.items() if v[0] < len(names)}
        self.tab = self.rng.randrange(1, len(names))
        self.target = self.rng.choice([lab for lab, (i, _) in self.buttons.items() if i == self.tab])
        return f'Open the {names[self.tab]} tab and click "{self.target}".'

    def oracle(self, at: At) -> dict:
        if self.tabs.currentIndex() != self.tab:
            bar = self.tabs.tabBar()
            return click(at(bar, bar.tabRect(self.tab).center()))
        return click(at(self.buttons[self.target][1]))

    def geometry(self, at: At) -> dict:
        bar = self.tabs.tabBar()
        return {"tab": at(bar, bar.tabRect(self.tab).center())}


class ChooseMenu(Task):
    name, description, max_steps = "choose-menu", "open a menu in the menu bar and choose the named item", 3

    def build(self) -> str:
        titles = self.rng.sample(("File", "Edit", "View", "Tools"), 3)
        items = self.words(9)
        self.bar = QMenuBar(self.body)
        self.bar.setGeometry(0, 0, self.W, 22)
        self.menus: list[tuple[QMenu, list]] = []
        for t in titles:
            m = self.bar.addMenu(t)
            acts = []
            for _ in range(3):
                label = items.pop()
                a = m.addAction(label)
                a.triggered.connect(lambda _=False, s=label: self.finish(s == self.item))
                acts.append(a)
            self.menus.append((m, acts))
        self.menu_i = self.rng.randrange(3)
        self.act = self.rng.choice(self.menus[self.menu_i][1])
        self.item = self.act.text()
        return f"Choose {titles[self.menu_i]} > {self.item} from the menu."

    def oracle(self, at: At) -> dict:
        menu = self.menus[self.menu_i][0]
        if menu.isVisible():
            return click(at(menu, menu.actionGeometry(self.act).center()))
        for m, _ in self.menus:
            if m.isVisible():  # the wrong menu is open: close it
                return key("Escape")
        return click(at(self.bar, self.bar.actionGeometry(menu.menuAction()).center()))


class ConfirmDialog(Task):
    name, description, max_steps = "confirm-dialog", "confirm or cancel a dialog as the instruction says", 2

    def build(self) -> str:
        yes, no = self.rng.choice((("OK", "Cancel"), ("Yes", "No")))
        self.confirm = self.rng.random() < 0.5
        frame = QFrame(self.body)
        frame.setFrameShape(QFrame.Shape.Box)
        frame.setStyleSheet("QFrame { background: #e8e8f0; border: 1px solid #505060; } QPushButton, QLabel { border: none; }")
        fw, fh = self.W - self.rng.randint(10, 30), self.rng.randint(70, 90)
        frame.setGeometry(self.rng.randint(3, self.W - fw - 3), self.rng.randint(5, self.H - fh - 5), fw, fh)
        msg = QLabel(f"Delete {self.words(1)[0]}?", frame)
        msg.move(8, 10)
        order = [yes, no] if self.rng.random() < 0.5 else [no, yes]
        for i, label in enumerate(order):
            b = QPushButton(label, frame)
            b.setStyleSheet("QPushButton { border: 1px solid #606070; background: #fafafa; padding: 2px 6px; }")
            b.adjustSize()
            b.move(8 + i * (fw // 2 - 4), fh - b.height() - 8)
            b.clicked.connect(lambda _=False, ok=(label == yes): self.finish(ok == self.confirm))
            self.named[label] = b
        self.target = yes if self.confirm else no
        return "Confirm the dialog." if self.confirm else "Cancel the dialog."

    def oracle(self, at: At) -> dict:
        return click(at(self.named[self.target]))


class DoubleClickItem(Task):
    name, description, max_steps = "double-click-item", "double-click the named item in a list", 3

    def build(self) -> str:
        labels = self.words(self.rng.randint(3, 6))
        self.target = self.rng.choice(labels)
        self.list = QListWidget(self.body)
        self.list.addItems(labels)
        self.list.setGeometry(self.rng.randint(4, 30), self.rng.randint(4, 20), 100, 120)
        self.list.itemDoubleClicked.connect(lambda it: self.finish(it.text() == self.target))
        return f"Double-click {self.target} in the list."

    def item_point(self, at: At, text: str) -> list:
        it = self.list.findItems(text, Qt.MatchFlag.MatchExactly)[0]
        return at(self.list.viewport(), self.list.visualItemRect(it).center())

    def oracle(self, at: At) -> dict:
        return click(self.item_point(at, self.target), "double_click")

    def geometry(self, at: At) -> dict:
        return {"target": self.item_point(at, self.target)}


class RightClickItem(DoubleClickItem):
    name, description, max_steps = "right-click-item", "right-click the named item and choose the named action", 3
    ACTIONS = ("Copy", "Rename", "Delete")

    def build(self) -> str:
        super().build()
        self.list.itemDoubleClicked.disconnect()
        self.action = self.rng.choice(self.ACTIONS)
        self.menu: QMenu | None = None
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        return f"Right-click {self.target} and choose {self.action}."

    def _menu(self, pos: QPoint) -> None:
        item = self.list.itemAt(pos)
        if item is None:
            return
        self.menu = QMenu(self.list)
        for name in self.ACTIONS:
            a = self.menu.addAction(name)
            a.triggered.connect(lambda _=False, n=name, t=item.text(): self.finish(n == self.action and t == self.target))
        # Keep the whole menu inside the task window, where the agent can see it.
        g, size = self.list.viewport().mapToGlobal(pos), self.menu.sizeHint()
        right, bottom = self.body.mapToGlobal(QPoint(self.W, self.H)).toTuple()
        self.menu.popup(QPoint(min(g.x(), right - size.width() - 1), min(g.y(), bottom - size.height() - 1)))

    def oracle(self, at: At) -> dict:
        if self.menu is not None and self.menu.isVisible():
            act = next(a for a in self.menu.actions() if a.text() == self.action)
            return click(at(self.menu, self.menu.actionGeometry(act).center()))
        return click(self.item_point(at, self.target), "right_click")


class SetSlider(Task):
    name, description, max_steps = "set-slider", "move a slider to the given value, then Submit", 8

    def build(self) -> str:
        self.value = self.rng.randint(1, 10)
        self.slider = QSlider(Qt.Orientation.Horizontal, self.body)
        self.slider.setRange(0, 10)
        self.slider.setPageStep(1)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setGeometry(10, self.rng.randint(30, 70), self.W - 20, 24)
        self.label = QLabel("0", self.body)
        self.label.setGeometry(self.W // 2 - 10, self.slider.y() - 18, 30, 16)
        self.slider.valueChanged.connect(lambda v: self.label.setText(str(v)))
        self.named["slider"] = self.slider
        self.submit_button()
        return f"Set the slider to {self.value} and click Submit."

    def judge(self) -> bool:
        return self.slider.value() == self.value

    def _handle(self) -> QRect:
        opt = QStyleOptionSlider()
        self.slider.initStyleOption(opt)
        return self.slider.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                                  QStyle.SubControl.SC_SliderHandle, self.slider)

    def oracle(self, at: At) -> dict:
        v = self.slider.value()
        if v == self.value:
            return click(at(self.named["submit"]))
        h = self._handle()
        if self.slider.hasFocus():
            return key("Right" if v < self.value else "Left")
        span = self.slider.width() - h.width()
        x = QStyle.sliderPositionFromValue(0, 10, self.value, span) + h.width() // 2
        src, dst = at(self.slider, h.center()), at(self.slider, QPoint(x, h.center().y()))
        return {"type": "drag", "x": src[0], "y": src[1], "x2": dst[0], "y2": dst[1]}


class ScrollList(Task):
    name, description, max_steps = "scroll-list", "scroll a list to find the named item and click it", 8

    def build(self) -> str:
        labels = self.words(16)
        self.target = self.rng.choice(labels[6:])
        self.list = QListWidget(self.body)
        self.list.addItems(labels)
        self.list.setGeometry(self.rng.randint(4, 40), 6, 100, 100)
        self.list.itemClicked.connect(lambda it: self.finish(it.text() == self.target))
        return f"Find {self.target} in the list and click it."

    def oracle(self, at: At) -> dict:
        it = self.list.findItems(self.target, Qt.MatchFlag.MatchExactly)[0]
        r, view = self.list.visualItemRect(it), self.list.viewport().rect()
        centre = at(self.list.viewport())
        if r.top() >= view.top() and r.bottom() <= view.bottom():
            return click(at(self.list.viewport(), r.center()))
        return {"type": "scroll_down" if r.top() > view.top() else "scroll_up", "x": centre[0], "y": centre[1]}


class FillForm(Task):
    name, description, max_steps = "fill-form", "fill a two-field login form and submit", 7

    def build(self) -> str:
        self.user, self.password = self.words(2)
        y = self.rng.randint(2, 24)
        self.fields = {}
        for label in ("Username", "Password"):
            QLabel(label, self.body).move(6, y)
            f = QLineEdit(self.body)
            f.setGeometry(6, y + 14, self.W - 20, 22)
            self.fields[label] = self.named[label] = f
            y += 44
        self.fields["Password"].setEchoMode(QLineEdit.EchoMode.Password)
        self.submit_button(y + 4)
        return f"Log in as {self.user} with password {self.password}."

    def judge(self) -> bool:
        return self.fields["Username"].text() == self.user and self.fields["Password"].text() == self.password

    def oracle(self, at: At) -> dict:
        return (self.fill(at, self.fields["Username"], self.user) or self.fill(at, self.fields["Password"], self.password)
                or click(at(self.named["submit"])))


class CopyPaste(Task):
    name, description, max_steps = "copy-paste", "copy the top field's text into the bottom field, then Submit", 8

    def build(self) -> str:
        self.word = self.words(1)[0]
        QApplication.clipboard().clear()
        self.src, self.dst = QLineEdit(self.word, self.body), QLineEdit(self.body)
        self.src.setGeometry(6, self.rng.randint(6, 20), self.W - 20, 22)
        self.dst.setGeometry(6, self.src.y() + self.rng.randint(34, 50), self.W - 20, 22)
        self.named.update(source=self.src, target=self.dst)
        self.submit_button()
        return "Copy the text from the top field into the bottom field, then click Submit."

    def judge(self) -> bool:
        return self.dst.text() == self.word and self.src.text() == self.word

    def oracle(self, at: At) -> dict:
        if self.dst.text() == self.word:
            return click(at(self.named["submit"]))
        if QApplication.clipboard().text() == self.word:
            if not self.dst.hasFocus():
                return click(at(self.dst))
            return key("ctrl+a") if self.dst.text() and self.dst.selectedText() != self.dst.text() else key("ctrl+v")
        if not self.src.hasFocus():
            return click(at(self.src))
        return key("ctrl+c") if self.src.selectedText() == self.word else key("ctrl+a")


TASKS: dict[str, type[Task]] = {t.name: t for t in (
    ClickButton, ClickShape, ClickCheckboxes, EnterText, FocusText, ChooseRadio, ChooseCombo, ClickTab,
    ChooseMenu, ConfirmDialog, DoubleClickItem, RightClickItem, SetSlider, ScrollList, FillForm, CopyPaste)}
