"""The Tools tab: the tool library as a sortable, filterable table; a step-by-step detail pane with each
target's thumbnail; rename, approve, prune, restore, and bulk prune. Every change is written to the
database at once (on the background thread); the agent reads the library at its next decision."""

from __future__ import annotations

import time

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton, QSpinBox, QSplitter,
                               QTableView, QVBoxLayout, QWidget)

from gui.controller import Controller
from memory.tools import Tool

COLUMNS = ("Name", "Steps", "Status", "Calls", "Success", "Last used", "Support")


def ago(t: float | None) -> str:
    if not t:
        return "never"
    s = time.time() - t
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit} ago"
    return "just now"


class ToolTableModel(QAbstractTableModel):
    """Rows are `memory.tools.Tool` records (plain data); editing a name asks `on_rename`."""

    def __init__(self, on_rename=None):
        super().__init__()
        self.tools: list[Tool] = []
        self.on_rename = on_rename

    def set_tools(self, tools: list[Tool]) -> None:
        self.beginResetModel()
        self.tools = list(tools)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.tools)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def flags(self, index):
        f = super().flags(index)
        return f | Qt.ItemFlag.ItemIsEditable if index.column() == 0 else f

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        t, col = self.tools[index.row()], index.column()
        rate = t.success_rate
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return (t.name, len(t.steps), t.status, t.calls, "—" if rate is None else f"{rate:.0%}", ago(t.last_used),
                    t.support)[col]
        if role == Qt.ItemDataRole.UserRole:  # sort keys
            return (t.name.lower(), len(t.steps), t.status, t.calls, -1.0 if rate is None else rate, t.last_used or 0.0,
                    t.support)[col]
        if role == Qt.ItemDataRole.ForegroundRole and t.status == "pruned":
            return Qt.GlobalColor.gray
        if role == Qt.ItemDataRole.ToolTipRole and col == 0:
            return f"tool {t.id}: {t.signature}"
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or index.column() != 0 or not str(value).strip():
            return False
        if self.on_rename is not None:
            self.on_rename(self.tools[index.row()].id, str(value).strip())
        return True


class ToolFilter(QSortFilterProxyModel):
    def __init__(self):
        super().__init__()
        self.text, self.status = "", ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_filter(self, text: str | None = None, status: str | None = None) -> None:
        self.beginFilterChange()
        self.text = self.text if text is None else text.lower()
        self.status = self.status if status is None else status
        self.endFilterChange()

    def filterAcceptsRow(self, row, parent) -> bool:
        t = self.sourceModel().tools[row]
        return (not self.status or t.status == self.status) and (not self.text or self.text in t.name.lower())


class ToolsView(QWidget):
    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        self.model = ToolTableModel(on_rename=lambda tid, name: self.act("rename", tid, name))
        self.proxy = ToolFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(4, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self.show_detail())
        self.search = QLineEdit(placeholderText="filter by name…")
        self.search.textChanged.connect(lambda s: self.proxy.set_filter(text=s))
        self.status_filter = QComboBox()
        for label, v in (("all statuses", ""), ("candidate", "candidate"), ("active", "active"), ("pruned", "pruned")):
            self.status_filter.addItem(label, v)
        self.status_filter.currentIndexChanged.connect(lambda _: self.proxy.set_filter(status=self.status_filter.currentData()))
        self.buttons = {}
        row = QHBoxLayout()
        row.addWidget(self.search)
        row.addWidget(self.status_filter)
        for name, label in (("rename", "Rename"), ("approve", "Approve"), ("prune", "Prune"), ("restore", "Restore")):
            b = self.buttons[name] = QPushButton(label)
            b.clicked.connect(lambda _=False, n=name: self.act_selected(n))
            row.addWidget(b)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        mine = QPushButton("Mine new episodes")
        mine.setToolTip("Look for recurring routines in successful episodes not mined yet")
        mine.clicked.connect(self.mine)
        row.addWidget(refresh)
        row.addWidget(mine)
        self.below = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.3, decimals=2)
        self.min_calls = QSpinBox(minimum=1, maximum=100000, value=5)
        self.bulk_btn = bulk = QPushButton("Prune them")
        bulk.clicked.connect(self.bulk_prune)
        bulk_row = QHBoxLayout()
        for w in (QLabel("Bulk: tools with success rate below"), self.below, QLabel("after at least"), self.min_calls,
                  QLabel("calls"), bulk):
            bulk_row.addWidget(w)
        bulk_row.addStretch(1)
        self.detail_title = QLabel("Select a tool to see its steps.")
        self.detail_title.setWordWrap(True)
        self.detail = QListWidget()
        self.detail.setIconSize(QPixmap(48, 48).size())
        self.summary = QLabel()
        box = QGroupBox("Steps")
        bl = QVBoxLayout(box)
        bl.addWidget(self.detail_title)
        bl.addWidget(self.detail)
        split = QSplitter()
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.table)
        ll.addWidget(self.summary)
        split.addWidget(left)
        split.addWidget(box)
        split.setSizes([700, 320])
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addLayout(bulk_row)
        lay.addWidget(split)
        ctl.home_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        store = self.ctl.store
        self.ctl.background.run(store.tools, self._loaded, lambda e: self.ctl.state.add_message("error", f"tools: {e}"))

    def _loaded(self, tools: list[Tool]) -> None:
        keep = self.selected()
        self.model.set_tools(tools)
        n = {s: sum(t.status == s for t in tools) for s in ("candidate", "active", "pruned")}
        self.summary.setText(f"{len(tools)} tools: {n['active']} active (offered to the agent), {n['candidate']} "
                             f"candidates, {n['pruned']} pruned")
        if keep is not None:
            self.select(keep.id)
        elif tools and self.proxy.rowCount():
            self.table.selectRow(0)
        self.show_detail()

    def showEvent(self, e) -> None:
        super().showEvent(e)
        self.refresh()

    def select(self, tool_id: int) -> None:
        for r in range(self.proxy.rowCount()):
            src = self.proxy.mapToSource(self.proxy.index(r, 0))
            if self.model.tools[src.row()].id == tool_id:
                self.table.selectRow(r)
                return

    def selected(self) -> Tool | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        return self.model.tools[self.proxy.mapToSource(rows[0]).row()]

    def act_selected(self, action: str) -> None:
        t = self.selected()
        if t is None:
            self.ctl.state.add_message("error", "select a tool first")
            return
        if action == "rename":
            self.table.edit(self.proxy.mapFromSource(self.model.index(self.model.tools.index(t), 0)))
            return
        self.act(action, t.id)

    def act(self, action: str, tool_id: int, arg: str | None = None) -> None:
        store = self.ctl.store

        def done(_):
            self.ctl.state.add_message("info", f"tool {tool_id}: {action}" + (f" to {arg!r}" if arg else "") + " saved")
            self.refresh()

        self.ctl.background.run(lambda: store.tool_action(action, tool_id, arg), done,
                                lambda e: self.ctl.state.add_message("error", f"tool {tool_id}: {action} failed: {e}"))

    def bulk_prune(self) -> None:
        store, below, calls = self.ctl.store, self.below.value(), self.min_calls.value()

        def done(ids):
            self.ctl.state.add_message("info", f"pruned {len(ids)} tools below {below:.0%} success")
            self.refresh()

        self.ctl.background.run(lambda: store.bulk_prune(below, calls), done,
                                lambda e: self.ctl.state.add_message("error", f"bulk prune failed: {e}"))

    def mine(self) -> None:
        store = self.ctl.store

        def done(ids):
            self.ctl.state.add_message("info", f"mining found or updated {len(ids)} tools")
            self.refresh()

        self.ctl.background.run(store.mine_tools, done, lambda e: self.ctl.state.add_message("error", f"mining: {e}"))

    def show_detail(self) -> None:
        t = self.selected()
        self.detail.clear()
        for b in self.buttons.values():
            b.setEnabled(t is not None)
        if t is None:
            self.detail_title.setText("Select a tool to see its steps.")
            return
        self.buttons["approve"].setEnabled(t.status != "active")
        self.buttons["prune"].setEnabled(t.status != "pruned")
        self.buttons["restore"].setEnabled(t.status != "candidate")
        params = ", ".join(f"{p.name} (step {p.step + 1})" for p in t.params) or "none"
        self.detail_title.setText(f"<b>{t.name}</b><br>status {t.status}, found in {t.support} episodes, "
                                  f"parameters: {params}, source episodes: {', '.join(map(str, t.sources[:12]))}"
                                  + (" …" if len(t.sources) > 12 else ""))
        for i, s in enumerate(t.steps):
            it = QListWidgetItem(f"{i + 1}. {s.describe()}" + (f"  offset {s.offset[0]:.2f},{s.offset[1]:.2f}" if s.offset else ""))
            if s.thumbnail:
                pm = QPixmap()
                if pm.loadFromData(s.thumbnail):
                    it.setIcon(QIcon(pm))
            elif s.target is not None:
                it.setToolTip("no thumbnail stored for this target")
            self.detail.addItem(it)
