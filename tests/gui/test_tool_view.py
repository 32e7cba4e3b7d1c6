"""The Tools tab: a prune (or approve, rename, bulk prune) in the table changes the database at once,
and so the tools the agent is offered (`candidates_for_policy()`, read through its own connection)."""

import io

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt

from memory.db import AgentDB
from memory.tools import ToolLibrary, ToolStep

E = 32


def unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


def thumb(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    return buf.getvalue()


def make_tools(home) -> list[int]:
    """Two tools mined from episodes with planted routines (as the agent's miner finds them)."""
    rng = np.random.default_rng(0)
    ok, cancel = rng.standard_normal(E), rng.standard_normal(E)
    ids = []
    with AgentDB.open(home) as db:
        lib = ToolLibrary(db)
        for target, key, colour in ((ok, "Return", "green"), (cancel, "Escape", "red")):
            episodes = []
            for i in range(30):
                noise = [ToolStep("key", key=str(k)) for k in rng.choice(["Tab", "Down", "Up", "Left"], 3)]
                routine = [ToolStep("click", target=unit(target + 0.05 * rng.standard_normal(E)), offset=(0.5, 0.5),
                                    thumbnail=thumb(colour)), ToolStep("type", span=(1, 2)), ToolStep("key", key=key)]
                episodes.append(noise[:1] + routine + noise[1:] + [ToolStep("done")])
            ids += lib.mine(episodes)
        for tid in ids:
            lib.approve(tid)
    return ids


def agents_view(home) -> list[int]:
    with AgentDB.open(home, readonly=True) as db:  # the agent's side: another connection
        return [t.id for t in ToolLibrary(db).candidates_for_policy()]


def test_prune_in_the_table_reaches_the_database_and_the_agent(panel, qtbot, tmp_path):
    home = tmp_path / "home"
    ids = make_tools(home)
    assert len(ids) == 2 and sorted(agents_view(home)) == sorted(ids)
    ctl, win = panel()
    view = win.tools
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    assert view.summary.text().startswith("2 tools: 2 active")
    name_of = {t.id: t.name for t in view.model.tools}
    view.select(ids[0])
    assert view.detail.count() == 3 and not view.detail.item(0).icon().isNull()  # steps with target thumbnails
    assert "click" in view.detail.item(0).text()
    qtbot.mouseClick(view.buttons["prune"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: agents_view(home) == [ids[1]], timeout=5000)
    qtbot.waitUntil(lambda: view.summary.text().startswith("2 tools: 1 active"), timeout=5000)
    assert view.selected().id == ids[0] and view.selected().status == "pruned"
    assert not view.buttons["prune"].isEnabled() and view.buttons["restore"].isEnabled()
    # filter: only pruned
    view.status_filter.setCurrentIndex(view.status_filter.findData("pruned"))
    assert view.proxy.rowCount() == 1
    view.status_filter.setCurrentIndex(0)
    # restore, then approve again
    qtbot.mouseClick(view.buttons["restore"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(t.id == ids[0] and t.status == "candidate" for t in view.model.tools), timeout=5000)
    assert agents_view(home) == [ids[1]]  # a candidate is not offered
    view.select(ids[0])
    qtbot.mouseClick(view.buttons["approve"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sorted(agents_view(home)) == sorted(ids), timeout=5000)
    # rename by editing the name cell
    row = next(r for r in range(view.proxy.rowCount())
               if view.model.tools[view.proxy.mapToSource(view.proxy.index(r, 0)).row()].id == ids[1])
    view.proxy.setData(view.proxy.index(row, 0), "confirm and type")
    qtbot.waitUntil(lambda: any(t.name == "confirm and type" for t in view.model.tools), timeout=5000)
    with AgentDB.open(home, readonly=True) as db:
        t = ToolLibrary(db).get(ids[1])
        assert t.name == "confirm and type" and t.renamed and name_of[ids[1]] != t.name


def test_bulk_prune_below_a_success_rate(panel, qtbot, tmp_path):
    home = tmp_path / "home"
    ids = make_tools(home)
    with AgentDB.open(home) as db:
        lib = ToolLibrary(db, demote_after=100)
        for ok in (True, False, False, False, False):
            lib.record_call(ids[0], ok)  # 20%
        for ok in (True, True, True, False, True):
            lib.record_call(ids[1], ok)  # 80%
    ctl, win = panel()
    view = win.tools
    qtbot.waitUntil(lambda: view.model.rowCount() == 2, timeout=5000)
    view.table.sortByColumn(4, Qt.SortOrder.DescendingOrder)  # by success rate
    first = view.model.tools[view.proxy.mapToSource(view.proxy.index(0, 0)).row()]
    assert first.id == ids[1]
    view.below.setValue(0.5)
    view.min_calls.setValue(5)
    qtbot.mouseClick(view.bulk_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: agents_view(home) == [ids[1]], timeout=5000)
