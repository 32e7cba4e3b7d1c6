"""The Memory tab: browse episodes by task and outcome, step through one, purge by task or age."""

from __future__ import annotations

import json
import time

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, QTimer
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QGroupBox, QHBoxLayout, QLabel, QListWidget,
                               QListWidgetItem, QMessageBox, QPushButton, QSpinBox, QSplitter, QTableView,
                               QVBoxLayout, QWidget)

from gui.controller import Controller

COLUMNS = ("Episode", "Task", "Outcome", "Return", "Steps", "Started", "By", "Instruction")


class EpisodeTableModel(QAbstractTableModel):
    """Rows are `memory.db.Episode` records, newest first (a model, not items: 500 rows cost nothing)."""

    def __init__(self):
        super().__init__()
        self.episodes: list = []

    def set_episodes(self, episodes: list) -> None:
        self.beginResetModel()
        self.episodes = episodes
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.episodes)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or role != Qt.ItemDataRole.DisplayRole:
            return None
        e = self.episodes[index.row()]
        return (e.id, e.task, e.outcome, "" if e.ret is None else f"{e.ret:.2f}", "" if e.steps is None else e.steps,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started)), e.source,
                e.instruction)[index.column()]


class MemoryView(QWidget):
    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        self.episodes = []
        self.task = QComboBox()
        self.outcome = QComboBox()
        for label, v in (("any outcome", ""), ("success", "success"), ("failure", "failure"), ("pending", "pending"),
                         ("aborted", "aborted")):
            self.outcome.addItem(label, v)
        self.limit = QSpinBox(minimum=10, maximum=100000, value=500, singleStep=100)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        self.task.activated.connect(lambda _: self.refresh())
        self.outcome.activated.connect(lambda _: self.refresh())
        top = QHBoxLayout()
        for w in (QLabel("Task"), self.task, QLabel("Outcome"), self.outcome, QLabel("Latest"), self.limit, refresh):
            top.addWidget(w)
        top.addStretch(1)
        self.model = EpisodeTableModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setResizeContentsPrecision(50)  # size columns from 50 rows, not all
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)

        self.table.selectionModel().selectionChanged.connect(lambda *_: self.show_steps())
        self.steps = QListWidget()
        self.steps.setIconSize(QPixmap(48, 48).size())
        self.steps_title = QLabel("Select an episode to replay its steps.")
        self.steps_title.setWordWrap(True)
        replay = QGroupBox("Replay")
        rl = QVBoxLayout(replay)
        rl.addWidget(self.steps_title)
        rl.addWidget(self.steps)
        self.purge_task = QComboBox()
        self.purge_days = QSpinBox(minimum=0, maximum=3650, value=0, suffix=" days")
        self.purge_days.setSpecialValueText("any age")
        self.purge_btn = purge = QPushButton("Purge…")
        purge.clicked.connect(self.purge)
        self.counts = QLabel()
        pr = QHBoxLayout()
        for w in (QLabel("Purge episodes and memory of"), self.purge_task, QLabel("older than"), self.purge_days, purge):
            pr.addWidget(w)
        pr.addStretch(1)
        pr.addWidget(self.counts)
        split = QSplitter()
        split.addWidget(self.table)
        split.addWidget(replay)
        split.setSizes([760, 300])
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(split, 1)
        lay.addLayout(pr)
        self.confirm = self._confirm  # tests replace this
        ctl.home_changed.connect(self.refresh)
        self._later = QTimer(self, singleShot=True, interval=2000)  # new episodes: at most one reload per 2 s
        self._later.timeout.connect(lambda: self.isVisible() and self.refresh())
        ctl.episodes_arrived.connect(lambda _: self._later.isActive() or self._later.start())
        self.refresh()

    def showEvent(self, e) -> None:
        super().showEvent(e)
        self.refresh()

    def _confirm(self, text: str) -> bool:
        return QMessageBox.question(self, "Purge", text) == QMessageBox.StandardButton.Yes

    def refresh(self) -> None:
        store = self.ctl.store
        task, outcome, limit = self.task.currentData() or "", self.outcome.currentData() or "", self.limit.value()

        def load():
            return store.tasks(), store.episodes(task, outcome, limit), store.memory_count()

        self.ctl.background.run(load, self._loaded, lambda e: self.ctl.state.add_message("error", f"memory: {e}"))

    def _loaded(self, result) -> None:
        tasks, episodes, n_mem = result
        keep = self.selected_id()
        for combo, first in ((self.task, "all tasks"), (self.purge_task, "all tasks")):
            cur = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(first, "")
            for t in tasks:
                combo.addItem(t, t)
            combo.setCurrentIndex(max(0, combo.findData(cur)))
            combo.blockSignals(False)
        first = not self.episodes
        self.episodes = list(reversed(episodes))  # newest first
        self.model.set_episodes(self.episodes)
        if first and self.episodes:
            self.table.resizeColumnsToContents()
        self.counts.setText(f"{len(self.episodes)} episodes shown · {n_mem} memory entries")
        if keep is not None:
            self.select(keep)

    def selected_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return self.episodes[rows[0].row()].id if rows and rows[0].row() < len(self.episodes) else None

    def select(self, episode_id: int) -> None:
        for r, e in enumerate(self.episodes):
            if e.id == episode_id:
                self.table.selectRow(r)
                return

    def show_steps(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self.episodes):
            return
        e = self.episodes[rows[0].row()]
        self.steps_title.setText(f"<b>Episode {e.id}</b> ({e.task}, {e.outcome}): {e.instruction}<br>"
                                 "Frames are not stored; each step shows its action, reward and target thumbnail.")
        store = self.ctl.store
        self.ctl.background.run(lambda: store.steps(e.id), self._steps_loaded,
                                lambda err: self.ctl.state.add_message("error", f"episode {e.id}: {err}"))

    def _steps_loaded(self, steps) -> None:
        self.steps.clear()
        for s in steps:
            a = {k: v for k, v in s.action.items() if k != "kind"}
            it = QListWidgetItem(f"{s.index + 1}. {json.dumps(a)}  reward {s.reward:+.2f}")
            if s.thumbnail:
                pm = QPixmap()
                if pm.loadFromData(s.thumbnail):
                    it.setIcon(QIcon(pm))
            self.steps.addItem(it)

    def purge(self) -> None:
        task, days = self.purge_task.currentData() or None, self.purge_days.value() or None
        if task is None and days is None:
            what = "EVERY episode and memory entry"
        else:
            what = " ".join(x for x in (f"the episodes and memory of {task}" if task else "all episodes and memory",
                                        f"older than {days} days" if days else "") if x)
        if not self.confirm(f"Delete {what} from {self.ctl.home}? Tools stay. This cannot be undone."):
            return
        store = self.ctl.store

        def run():
            if task is None and days is None:
                return store.db.purge()
            return store.purge(task, days)

        def done(n):
            self.ctl.state.add_message("info", f"purged {n['episodes']} episodes and {n['memory']} memory entries")
            self.ctl.load_home()

        self.ctl.background.run(run, done, lambda e: self.ctl.state.add_message("error", f"purge failed: {e}"))
