"""The Memory tab: episodes by task and outcome, a replay of one episode's steps, purge by task."""

from PySide6.QtCore import Qt

from memory.db import AgentDB


def fill(home):
    with AgentDB.open(home) as db:
        for i in range(6):
            task = "fake-click" if i % 2 else "fake-type"
            eid = db.begin_episode(task, i, f"Do thing {i}.", source="person" if i == 5 else "agent")
            db.add_step(eid, 0, {"type": "click", "x": 10, "y": 20, "kind": "click"}, -0.01)
            db.add_step(eid, 1, {"type": "key", "key": "Return", "kind": "key"}, 1.0)
            db.end_episode(eid, i % 3 == 0, 0.99 if i % 3 == 0 else -1.0, 2)


def test_browse_replay_and_purge(panel, qtbot, tmp_path):
    home = tmp_path / "home"
    fill(home)
    ctl, win = panel()
    view = win.memory
    qtbot.waitUntil(lambda: view.model.rowCount() == 6, timeout=5000)
    assert str(view.model.index(0, 6).data()) == "person" and str(view.model.index(1, 6).data()) == "agent"  # demonstrations marked
    view.task.setCurrentIndex(view.task.findData("fake-click"))
    view.outcome.setCurrentIndex(view.outcome.findData("failure"))
    view.refresh()
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)  # episodes 1 and 5
    assert {str(view.model.index(r, 0).data()) for r in range(2)} == {"2", "6"}
    view.table.selectRow(0)
    qtbot.waitUntil(lambda: view.steps.count() == 2, timeout=5000)
    assert '"key": "Return"' in view.steps.item(1).text() and "+1.00" in view.steps.item(1).text()
    # curves and per-task stats come from the same database
    qtbot.waitUntil(lambda: ctl.task_stats.get("fake-type", {}).get("episodes") == 3, timeout=5000)
    assert ctl.curves.episodes == {"fake-type": 3, "fake-click": 2}  # the demonstration is not the agent's
    asked = []
    view.confirm = lambda text: asked.append(text) or True
    view.purge_task.setCurrentIndex(view.purge_task.findData("fake-click"))
    qtbot.mouseClick(view.purge_btn, Qt.MouseButton.LeftButton)
    assert asked and "fake-click" in asked[0]
    qtbot.waitUntil(lambda: any("purged 3 episodes" in m for _, _, m in ctl.state.messages), timeout=5000)
    with AgentDB.open(home, readonly=True) as db:
        assert {e.task for e in db.episodes()} == {"fake-type"}
