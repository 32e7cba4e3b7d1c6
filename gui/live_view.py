"""The Live tab: the agent's screen with its intended action and heat map, a person's takeover
(recorded as a demonstration), and thumbs up/down for episodes a person must judge."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QGroupBox, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from gui.controller import Controller
from gui.widgets import LiveCanvas

KEY_NAMES = {
    Qt.Key.Key_Return: "Return", Qt.Key.Key_Enter: "Return", Qt.Key.Key_Tab: "Tab", Qt.Key.Key_Backtab: "shift+Tab",
    Qt.Key.Key_Escape: "Escape", Qt.Key.Key_Backspace: "BackSpace", Qt.Key.Key_Delete: "Delete",
    Qt.Key.Key_Up: "Up", Qt.Key.Key_Down: "Down", Qt.Key.Key_Left: "Left", Qt.Key.Key_Right: "Right",
    Qt.Key.Key_Home: "Home", Qt.Key.Key_End: "End", Qt.Key.Key_PageUp: "Page_Up", Qt.Key.Key_PageDown: "Page_Down",
}
CTRL_KEYS = {Qt.Key.Key_A: "ctrl+a", Qt.Key.Key_C: "ctrl+c", Qt.Key.Key_V: "ctrl+v", Qt.Key.Key_X: "ctrl+x",
             Qt.Key.Key_Z: "ctrl+z"}


class LiveView(QWidget):
    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl
        m = ctl.live
        self.canvas = LiveCanvas(m, ctl.patch)
        self.canvas.on_action = self.person_action
        self.canvas.on_key = self.person_key
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.heat = QCheckBox("Click heat map")
        self.heat.setChecked(m.show_heat)
        self.heat.toggled.connect(lambda on: m.set_overlays(heat=on))
        self.action = QCheckBox("Intended action")
        self.action.setChecked(m.show_action)
        self.action.toggled.connect(lambda on: m.set_overlays(action=on))

        self.takeover_btn = QPushButton("Take over")
        self.takeover_btn.setCheckable(True)
        self.takeover_btn.toggled.connect(ctl.takeover)
        self.done_btn = QPushButton("Declare done")
        self.done_btn.clicked.connect(lambda: self.person_action({"type": "done"}))
        self.takeover_note = QLabel()
        self.takeover_note.setWordWrap(True)
        take = QGroupBox("Take over")
        tl = QVBoxLayout(take)
        tl.addWidget(self.takeover_btn)
        tl.addWidget(self.takeover_note)
        tl.addWidget(self.done_btn)

        self.awaiting = QListWidget()
        self.awaiting.setMaximumHeight(120)
        self.last = QLabel()
        self.last.setWordWrap(True)
        self.up, self.down = QPushButton("✓  Success (thumbs up)"), QPushButton("✗  Failure (thumbs down)")
        self.up.clicked.connect(lambda: self.verdict(True))
        self.down.clicked.connect(lambda: self.verdict(False))
        judge = QGroupBox("Your verdict")
        jl = QVBoxLayout(judge)
        jl.addWidget(QLabel("Episodes of ask-the-person tasks wait here; with none selected, the buttons judge the "
                            "last episode."))
        jl.addWidget(self.awaiting)
        jl.addWidget(self.last)
        row = QHBoxLayout()
        row.addWidget(self.up)
        row.addWidget(self.down)
        jl.addLayout(row)

        side = QVBoxLayout()
        side.addWidget(self.info)
        side.addWidget(self.heat)
        side.addWidget(self.action)
        side.addWidget(take)
        side.addWidget(judge)
        side.addStretch(1)
        lay = QHBoxLayout(self)
        lay.addWidget(self.canvas, 3)
        lay.addLayout(side, 2)
        m.frame_changed.connect(self._refresh_info)
        m.changed.connect(self._refresh)
        ctl.state.changed.connect(self._refresh)
        self._refresh()

    def _refresh_info(self) -> None:
        m, actors = self.ctl.live, self.ctl.state.actors
        if actors and self.ctl.state.alive:  # the learner has no screen of its own
            self.info.setText(f"<b>No live view with {actors} Ray actors</b>: each acts on its own display, which this "
                              "process does not see (their figures are in the Actors tab).")
            return
        self.info.setText(f"<b>{m.task or '—'}</b>: {m.instruction or ''}<br>{m.fps:.1f} frames/s"
                          + (f" · display {self.ctl.state.display}" if self.ctl.state.display else " · no display (fake desktop)"))

    def _refresh(self) -> None:
        m, alive = self.ctl.live, self.ctl.state.alive
        actors = self.ctl.state.actors and alive
        self.takeover_btn.setEnabled(alive and not actors)
        self.takeover_btn.blockSignals(True)
        self.takeover_btn.setChecked(m.takeover != "off")
        self.takeover_btn.blockSignals(False)
        self.done_btn.setEnabled(m.takeover == "ready")
        self.takeover_note.setText("Not with Ray actors: they act on their own displays. Restart with 0 actors to "
                                   "act on the agent's desktop yourself." if actors else {
            "off": "Act on the agent's desktop yourself; your episode is recorded as a demonstration it learns from.",
            "requested": "Waiting for the agent to finish its episode…",
            "ready": "Your turn: click, drag, scroll or type on the screen (only words of the instruction can be typed).",
        }[m.takeover])
        ids = [e["id"] for e in m.awaiting]
        if ids != [self.awaiting.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.awaiting.count())]:
            self._fill_awaiting()
        e = m.last_episode
        self.last.setText(f"Last episode #{e['id']} {e['task']}: "
                          f"{'success' if e['success'] else 'awaiting you' if e['success'] is None else 'failure'}, "
                          f"return {e['ret']:.2f}" if e else "No episode yet.")
        self.up.setEnabled(alive and e is not None)
        self.down.setEnabled(alive and e is not None)
        self._refresh_info()

    def _fill_awaiting(self) -> None:
        keep = self.awaiting.currentItem().data(Qt.ItemDataRole.UserRole) if self.awaiting.currentItem() else None
        self.awaiting.clear()
        for e in self.ctl.live.awaiting:
            it = QListWidgetItem(f"#{e['id']} {e['task']}: {e['instruction']}")
            it.setData(Qt.ItemDataRole.UserRole, e["id"])
            self.awaiting.addItem(it)
            if e["id"] == keep:
                self.awaiting.setCurrentItem(it)

    def verdict(self, good: bool) -> None:
        it = self.awaiting.currentItem()
        eid = it.data(Qt.ItemDataRole.UserRole) if it is not None else (self.ctl.live.last_episode or {}).get("id")
        if eid is not None:
            self.ctl.thumbs(eid, good)

    # -- a person acting ---------------------------------------------------------------------------------
    def person_action(self, action: dict) -> None:
        if self.ctl.live.takeover != "ready":
            return
        self._flush_typed()
        self.ctl.demo_action(action)

    def _flush_typed(self) -> None:
        from agent.actions import find_span

        m = self.ctl.live
        text, m.typed = m.typed.strip(), ""
        if not text:
            return
        try:
            span = find_span(m.instruction, text)
        except ValueError:
            self.ctl.state.add_message("error", f"'{text}' is not words of the instruction; the agent can only type "
                                                "those, so it was not sent")
            return
        self.ctl.demo_action({"type": "type", "span": list(span)})

    def person_key(self, e) -> bool:
        m = self.ctl.live
        mods = e.modifiers()
        if mods & Qt.KeyboardModifier.ControlModifier:
            name = CTRL_KEYS.get(Qt.Key(e.key()))
            if name:
                self.person_action({"type": "key", "key": name})
            return True
        name = KEY_NAMES.get(Qt.Key(e.key()))
        if name == "Return" or (name and name != "BackSpace"):
            self.person_action({"type": "key", "key": name})
            return True
        if name == "BackSpace" and m.typed:
            m.typed = m.typed[:-1]
        elif name == "BackSpace":
            self.person_action({"type": "key", "key": name})
        elif e.text() and e.text().isprintable():
            if e.text() == " " and not m.typed:
                self.person_action({"type": "key", "key": "space"})
            else:
                m.typed += e.text()
        else:
            return False
        m.frame_changed.emit()
        return True
