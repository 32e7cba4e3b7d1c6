"""The Tasks tab: browse every task source, assign a mix or a queue to the agent, write a new task."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QSplitter,
                               QTableWidget, QTableWidgetItem, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from agent.tasks.user import tasks_dir as default_dir
from gui.controller import Controller
from gui.tasks import CHECKER_KINDS, TaskForm, TaskInfo, default_sources, list_all


class TaskBrowser(QGroupBox):
    def __init__(self, ctl: Controller, tasks_dir: Path | None, sources=None):
        super().__init__("Tasks")
        self.ctl, self.tasks_dir, self.sources = ctl, tasks_dir, sources
        self.tasks: list[TaskInfo] = []
        self.filter = QLineEdit(placeholderText="filter tasks…")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Task", "Episodes", "Success (last 50)", "Description"])
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        for col in (0, 1, 2):
            self.tree.header().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemDoubleClicked.connect(lambda *_: self.add_selected())
        self.add_btn = QPushButton("Add to assignment ▸")
        self.add_btn.clicked.connect(self.add_selected)
        reload_btn = QPushButton("Rescan")
        reload_btn.clicked.connect(self.reload)
        self.note = QLabel()
        self.note.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.filter)
        row.addWidget(reload_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.tree)
        lay.addWidget(self.note)
        lay.addWidget(self.add_btn)
        self.filter.textChanged.connect(self._apply_filter)
        ctl.stats_changed.connect(self._update_stats)
        self.reload()

    def reload(self) -> None:
        sources = self.sources if self.sources is not None else default_sources(self.tasks_dir)
        self.ctl.background.run(lambda: list_all(sources), self._loaded,
                                lambda e: self.ctl.state.add_message("error", f"listing tasks: {e}"))

    def _loaded(self, result) -> None:
        self.tasks, errors = result
        for e in errors:
            self.ctl.state.add_message("error", e)
        self.tree.clear()
        groups: dict[str, QTreeWidgetItem] = {}
        for t in self.tasks:
            g = groups.get(t.source)
            if g is None:
                g = groups[t.source] = QTreeWidgetItem(self.tree, [t.source])
                g.setFlags(g.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                g.setExpanded(t.source != "miniwob")
            it = QTreeWidgetItem(g, [t.id, "", "", t.error or t.description])
            it.setData(0, Qt.ItemDataRole.UserRole, t)
            if not t.runnable:
                it.setForeground(0, Qt.GlobalColor.gray)
                it.setToolTip(0, t.error or "listed; the learning loop does not run this source yet")
        for g in groups.values():
            g.setText(1, "")
            g.setText(3, f"{g.childCount()} tasks")
        self._update_stats()
        self._apply_filter(self.filter.text())

    def items(self):
        for i in range(self.tree.topLevelItemCount()):
            g = self.tree.topLevelItem(i)
            for j in range(g.childCount()):
                yield g.child(j)

    def _update_stats(self) -> None:
        stats = self.ctl.task_stats
        for it in self.items():
            s = stats.get(it.text(0))
            it.setText(1, str(s["episodes"]) if s else "")
            it.setText(2, f"{s['recent']:.0%}" if s and s["recent"] is not None else "")

    def _apply_filter(self, text: str) -> None:
        text = text.lower()
        for it in self.items():
            it.setHidden(bool(text) and text not in it.text(0).lower() and text not in it.text(3).lower())

    def add_selected(self) -> None:
        for it in self.tree.selectedItems():
            t = it.data(0, Qt.ItemDataRole.UserRole)
            if t is None:
                continue
            if not t.runnable:
                self.ctl.state.add_message("error", f"{t.id}: listed only; the learning loop runs playground, "
                                                    "MiniWoB++ and fake-desktop tasks for now")
                continue
            self.ctl.assignment.add(t.id)


class AssignmentPanel(QGroupBox):
    def __init__(self, ctl: Controller):
        super().__init__("Assignment")
        self.ctl = ctl
        self.mode = QComboBox()
        self.mode.addItem("Mix: interleave, in proportion to the weights", "mix")
        self.mode.addItem("Queue: each task weight episodes in a row, in order", "queue")
        self.mode.currentIndexChanged.connect(lambda _: ctl.assignment.set_mode(self.mode.currentData()))
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Task", "Weight"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.itemChanged.connect(self._weight_edited)
        self.schedule = QLabel()
        self.schedule.setWordWrap(True)
        self.current = QLabel()
        self.current.setWordWrap(True)
        remove, clear = QPushButton("Remove"), QPushButton("Clear")
        remove.clicked.connect(self._remove)
        clear.clicked.connect(ctl.assignment.clear)
        self.assign_btn = QPushButton("Assign to the agent")
        self.assign_btn.clicked.connect(ctl.assign)
        row = QHBoxLayout()
        row.addWidget(remove)
        row.addWidget(clear)
        lay = QVBoxLayout(self)
        lay.addWidget(self.mode)
        lay.addWidget(self.table)
        lay.addLayout(row)
        lay.addWidget(self.schedule)
        lay.addWidget(self.assign_btn)
        lay.addWidget(self.current)
        ctl.assignment.changed.connect(self._refresh)
        ctl.state.changed.connect(self._refresh_current)
        self._refresh()
        self._refresh_current()

    def _refresh(self) -> None:
        """The rows from the model; a weight is an editable number (a spin box while you edit it)."""
        a = self.ctl.assignment
        self.table.blockSignals(True)
        shown = [self.table.item(i, 0).text() for i in range(self.table.rowCount())]
        if shown != a.tasks():
            self.table.setRowCount(len(a.entries))
            for i, (task, _) in enumerate(a.entries):
                item = QTableWidgetItem(task)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, 0, item)
                self.table.setItem(i, 1, QTableWidgetItem())
        for i, (_, w) in enumerate(a.entries):  # in place: the item being edited may be the one that changed
            if self.table.item(i, 1).data(Qt.ItemDataRole.EditRole) != int(w):
                self.table.item(i, 1).setData(Qt.ItemDataRole.EditRole, int(w))
        self.table.blockSignals(False)
        sched = a.schedule()
        shown = ", ".join(sched[:12]) + (" …" if len(sched) > 12 else "")
        self.schedule.setText(f"One cycle of episodes: {shown}" if sched else "Add tasks from the list on the left.")

    def _weight_edited(self, item: QTableWidgetItem) -> None:
        if item.column() == 1:
            task = self.table.item(item.row(), 0).text()
            w = max(1, min(100, int(item.data(Qt.ItemDataRole.EditRole) or 1)))
            self.ctl.assignment.set_weight(task, w)

    def _refresh_current(self) -> None:
        tasks = self.ctl.state.assigned
        self.current.setText("The agent is learning: " + ", ".join(dict.fromkeys(tasks)) if tasks and self.ctl.state.alive
                             else "The agent is not running.")

    def _remove(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        for r in rows:
            self.ctl.assignment.remove(self.table.item(r, 0).text())


class TaskFormPanel(QGroupBox):
    """A new user task, validated as you type; saves NAME.toml in the user task folder."""

    def __init__(self, ctl: Controller, tasks_dir: Path | None, on_saved=None):
        super().__init__("New task")
        self.ctl, self.on_saved = ctl, on_saved
        self.directory = tasks_dir or default_dir()
        self.name = QLineEdit(placeholderText="save-note")
        self.instruction = QLineEdit(placeholderText="Type hello and press Enter")
        self.command = QLineEdit(placeholderText="my-app --new")
        self.max_steps = QSpinBox(minimum=1, maximum=1000, value=10)
        self.window_by = QComboBox()
        self.window_by.addItems(["title", "geometry"])
        self.window_title = QLineEdit(placeholderText="a window whose title contains this")
        self.geometry = QLineEdit(placeholderText="x, y, width, height")
        self.checker = QComboBox()
        self.checker.addItems(list(CHECKER_KINDS))
        self.checker.setCurrentText("ask")
        self.checker_command = QLineEdit(placeholderText="test -s /tmp/out")
        self.checker_path = QLineEdit(placeholderText="/tmp/out")
        self.checker_text = QLineEdit(placeholderText="hello")
        self.checker_title = QLineEdit(placeholderText="Saved")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.preview = QPlainTextEdit(readOnly=True)
        self.preview.setMaximumHeight(170)
        self.overwrite = QCheckBox("replace a file of that name")
        self.save_btn = QPushButton("Save task")
        self.save_btn.clicked.connect(self.save)
        self.form = form = QFormLayout()
        for label, w in (("Name", self.name), ("Instruction", self.instruction), ("Command", self.command),
                         ("Max steps", self.max_steps), ("Find window by", self.window_by),
                         ("Window title", self.window_title), ("Geometry", self.geometry), ("Checker", self.checker),
                         ("Checker command", self.checker_command), ("File", self.checker_path),
                         ("File contains", self.checker_text), ("Title appears", self.checker_title)):
            form.addRow(label, w)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Saved to {self.directory}"))
        lay.addLayout(form)
        lay.addWidget(self.status)
        lay.addWidget(self.preview)
        row = QHBoxLayout()
        row.addWidget(self.overwrite)
        row.addWidget(self.save_btn)
        lay.addLayout(row)
        for w in (self.name, self.instruction, self.command, self.window_title, self.geometry, self.checker_command,
                  self.checker_path, self.checker_text, self.checker_title):
            w.textChanged.connect(self.validate)
        self.max_steps.valueChanged.connect(self.validate)
        self.window_by.currentIndexChanged.connect(self.validate)
        self.checker.currentIndexChanged.connect(self.validate)
        self.validate()

    def task_form(self) -> TaskForm:
        return TaskForm(self.name.text(), self.instruction.text(), self.command.text(), self.max_steps.value(),
                        self.window_by.currentText(), self.window_title.text(), self.geometry.text(),
                        self.checker.currentText(), self.checker_command.text(), self.checker_path.text(),
                        self.checker_text.text(), self.checker_title.text())

    def validate(self) -> str:
        """Parsing a few hundred bytes of TOML: cheap enough to do on every keystroke."""
        by, kind = self.window_by.currentText(), self.checker.currentText()
        for w, show in ((self.window_title, by == "title"), (self.geometry, by == "geometry"),
                        (self.checker_command, kind == "command"), (self.checker_path, kind == "file_contains"),
                        (self.checker_text, kind == "file_contains"), (self.checker_title, kind == "window_title")):
            self.form.setRowVisible(w, show)
        f = self.task_form()
        err = f.validate()
        try:
            self.preview.setPlainText(f.to_toml())
        except ValueError:
            pass
        self.status.setText(f"✗ {err}" if err else f"✓ valid: saves as {f.name}.toml (task user-{f.name})")
        self.status.setStyleSheet("color: #b00020;" if err else "color: #1b7f1b;")
        self.save_btn.setEnabled(not err)
        return err

    def save(self) -> None:
        try:
            path = self.task_form().save(self.directory, overwrite=self.overwrite.isChecked())
        except (ValueError, OSError) as e:
            self.status.setText(f"✗ {e}")
            self.status.setStyleSheet("color: #b00020;")
            return
        self.ctl.state.add_message("info", f"saved {path}")
        if self.on_saved:
            self.on_saved()


class TasksView(QWidget):
    def __init__(self, ctl: Controller, tasks_dir: Path | None = None, sources=None):
        super().__init__()
        self.browser = TaskBrowser(ctl, tasks_dir, sources)
        self.assignment = AssignmentPanel(ctl)
        self.form = TaskFormPanel(ctl, tasks_dir, on_saved=self.browser.reload)
        split = QSplitter()
        split.addWidget(self.browser)
        split.addWidget(self.assignment)
        split.addWidget(self.form)
        split.setSizes([520, 300, 380])
        QVBoxLayout(self).addWidget(split)
