"""The Actors tab: with `--actors N` (Ray), one row per actor (its machine, process, episodes, steps/s,
restarts, dropped episodes, the policy version it last acted with) and the learner's updates/s and policy
lag, refreshed from the agent process's progress reports."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtWidgets import QHeaderView, QLabel, QTableView, QVBoxLayout, QWidget

from gui.controller import Controller
from gui.models import ActorsModel

COLUMNS = (  # header, how to show a row's value, tooltip
    ("Actor", lambda a, m: a["actor"], "The actor's index (it keeps it across restarts)"),
    ("Machine", lambda a, m: a.get("node") or "—", "IP address of the machine it acts on"),
    ("PID", lambda a, m: a.get("pid") or "—", "Its process (a new one after each restart)"),
    ("Episodes", lambda a, m: a.get("episodes", 0), "Episodes it sent to the learner"),
    ("Steps/s", lambda a, m: f"{a.get('steps_per_s', 0.0):.1f}", "Env steps per second over its recent episodes"),
    ("Restarts", lambda a, m: a.get("restarts", 0), "Times Ray restarted it with a fresh desktop after its process died"),
    ("Dropped", lambda a, m: a.get("dropped_episodes", 0), "Episodes lost with a process that died (the one it was acting)"),
    ("Policy version", lambda a, m: a.get("version", -1) if a.get("version", -1) >= 0 else "—",
     "The policy version (updates behind its weights) it last acted with"),
    ("State", lambda a, m: m.state_of(a), "acting, restarting (Ray is bringing it back) or given up"),
)


class ActorsTable(QAbstractTableModel):
    """The actors, one per row (a view of `ActorsModel`)."""

    def __init__(self, model: ActorsModel):
        super().__init__()
        self.model = model
        self._rows = 0
        model.changed.connect(self._changed)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.model.actors)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.model.actors):
            return None
        a = self.model.actors[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return str(COLUMNS[index.column()][1](a, self.model))
        if role == Qt.ItemDataRole.TextAlignmentRole and 0 < index.column() < len(COLUMNS) - 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section][0]
            if role == Qt.ItemDataRole.ToolTipRole:
                return COLUMNS[section][2]
        return None

    def _changed(self) -> None:
        n = len(self.model.actors)
        if n != self._rows:
            self.beginResetModel()
            self._rows = n
            self.endResetModel()
        elif n:
            self.dataChanged.emit(self.index(0, 0), self.index(n - 1, len(COLUMNS) - 1))


class ActorsView(QWidget):
    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table_model = ActorsTable(ctl.actors)
        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addWidget(self.table, 1)
        ctl.actors.changed.connect(self.refresh)
        ctl.state.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        m, st = self.ctl.actors, self.ctl.state
        if not m.count:
            self.summary.setText("The agent runs the single-process loop on its own desktop. Set <b>Ray actors</b> "
                                 "beside Start to run several desktops, each an actor with a copy of the policy, "
                                 "learned from by this agent; they are listed here.")
            self.table.setVisible(False)
            return
        self.table.setVisible(True)
        where = f"on the Ray cluster at {m.address}" if m.address else "on a local Ray"
        head = f"<b>{m.count} Ray actors</b> {where}, each acting on its own display; this process learns."
        if not st.alive and m.actors:
            head += " The run is over: its last report."
        if not m.actors:
            waiting = "starting Ray and the actors…" if st.alive else "no report from this run."
            self.summary.setText(f"{head}<br>{waiting}")
            return
        lag = m.policy_lag
        lag_text = (f"policy lag median {lag['median']:g}, max {lag['max']} versions over {lag['steps']:,} learned steps"
                    if lag else "policy lag: no update yet")
        upd = f" ({m.update_s:.2f} s each)" if m.update_s else ""
        steps = sum(a.get("steps_per_s", 0.0) for a in m.actors)
        self.summary.setText(f"{head}<br>Learner: {m.updates_per_s:.2f} updates/s{upd} · policy version {m.version} · "
                             f"{lag_text} · weights {m.broadcast_mb:.1f} MB per version · actors together "
                             f"{steps:.1f} env steps/s")
