"""The Tasks tab: sources, the assignment's schedule, and the new-task form validated as you type."""

import tomllib

from PySide6.QtCore import Qt

from agent.tasks.user import parse_task
from gui.tasks import Assignment, FakeSource, TaskForm, TaskInfo, check_assignable, list_all


def test_schedule_mixes_by_weight_or_queues_in_order():
    a = Assignment()
    a.add("a", 2)
    a.add("b", 1)
    assert a.schedule() == ["a", "b", "a"]
    a.set_mode("queue")
    assert a.schedule() == ["a", "a", "b"]
    a.set_weight("b", 3)
    assert a.schedule() == ["a", "a", "b", "b", "b"]
    assert check_assignable(["fake-click", "click-button"]).startswith("fake and playground tasks need different")
    assert check_assignable(["miniwob-click-test", "miniwob-enter-text"]) == ""
    assert "no valid task file" in check_assignable(["user-x"]) and check_assignable(["click-button"]) == ""


class Broken:
    name = "broken"

    def list(self):
        raise OSError("no such folder")


class Extra:
    name = "extra"

    def list(self):
        return [TaskInfo("extra-one", self.name, "from a new source", False)]


def test_a_new_source_is_listed_and_a_broken_one_hides_nothing(panel, qtbot):
    tasks, errors = list_all([Broken(), FakeSource()])
    assert [t.id for t in tasks] == ["fake-click", "fake-type"] and errors == ["task source broken: OSError: no such folder"]
    from gui.task_view import TasksView

    ctl, _ = panel()
    view = TasksView(ctl, sources=[FakeSource(), Extra()])
    qtbot.addWidget(view)
    qtbot.waitUntil(lambda: len(view.browser.tasks) == 3, timeout=5000)
    assert {it.text(0) for it in view.browser.items()} == {"fake-click", "fake-type", "extra-one"}
    item = next(it for it in view.browser.items() if it.text(0) == "fake-type")
    item.setSelected(True)
    qtbot.mouseClick(view.browser.add_btn, Qt.MouseButton.LeftButton)
    assert ctl.assignment.tasks() == ["fake-click", "fake-type"]
    extra = next(it for it in view.browser.items() if it.text(0) == "extra-one")
    view.browser.tree.clearSelection()
    extra.setSelected(True)
    qtbot.mouseClick(view.browser.add_btn, Qt.MouseButton.LeftButton)  # listed only: not assignable
    assert ctl.assignment.tasks() == ["fake-click", "fake-type"]
    assert "listed only" in ctl.state.messages[-1][2]


def test_form_validates_as_you_type_and_saves_toml(panel, qtbot, tmp_path):
    ctl, win = panel()
    f = win.tasks.form
    assert "field 'name'" in f.status.text() and not f.save_btn.isEnabled()
    qtbot.keyClicks(f.name, "save note")  # a space is not allowed
    assert "field 'name' must be 1-64 letters" in f.status.text()
    f.name.clear()
    qtbot.keyClicks(f.name, "save-note")
    assert "field 'instruction'" in f.status.text()
    qtbot.keyClicks(f.instruction, "Type hello and press Enter")
    assert "field 'command'" in f.status.text()
    qtbot.keyClicks(f.command, "my-app 'unbalanced")
    assert "field 'command': No closing quotation" in f.status.text()
    f.command.clear()
    qtbot.keyClicks(f.command, "my-app --new")
    assert "field 'window.title' must be text" in f.status.text()
    f.window_by.setCurrentText("geometry")
    assert not f.form.isRowVisible(f.window_title) and f.form.isRowVisible(f.geometry)
    qtbot.keyClicks(f.geometry, "0, 0, 160")
    assert "window.geometry" in f.status.text()
    qtbot.keyClicks(f.geometry, ", 210")
    assert f.status.text().startswith("✓") and f.save_btn.isEnabled()
    f.checker.setCurrentText("file_contains")
    assert "checker.path" in f.status.text() and not f.save_btn.isEnabled()
    qtbot.keyClicks(f.checker_path, "/tmp/out")
    qtbot.keyClicks(f.checker_text, 'say "hi"')
    assert f.status.text().startswith("✓")
    qtbot.mouseClick(f.save_btn, Qt.MouseButton.LeftButton)
    path = tmp_path / "tasks" / "save-note.toml"
    spec = parse_task(path.read_text(), str(path))
    assert spec.window_geometry == (0, 0, 160, 210) and spec.checker == {"kind": "file_contains", "path": "/tmp/out",
                                                                          "text": 'say "hi"'}
    assert tomllib.loads(path.read_text())["command"] == ["my-app", "--new"]
    qtbot.mouseClick(f.save_btn, Qt.MouseButton.LeftButton)  # a second save would replace the file: refused
    assert "exists" in f.status.text()
    qtbot.waitUntil(lambda: any(it.text(0) == "user-save-note" for it in win.tasks.browser.items()), timeout=5000)


def test_form_toml_escapes_what_people_type():
    form = TaskForm(name="x", instruction='Say "a\\b" then\ttab', command="prog 'two words'", window_title="T",
                    checker="command", checker_command="test -s /tmp/o")
    d = tomllib.loads(form.to_toml())
    assert d["instruction"] == 'Say "a\\b" then\ttab' and d["command"] == ["prog", "two words"]
    assert form.validate() == "field 'instruction' must be printable text of 1-512 characters"  # the tab


def test_a_user_task_is_assignable_alone_and_only_to_its_own_desktop(tmp_path, monkeypatch):
    from gui.tasks import same_desktop

    (tmp_path / "note.toml").write_text('name = "note"\ninstruction = "Do it"\ncommand = ["true"]\n'
                                        '[window]\ntitle = "Note"\n[checker]\nkind = "ask"\n')
    monkeypatch.setenv("SQUIRREL_TASKS_DIR", str(tmp_path))
    assert check_assignable(["user-note"]) == ""
    assert "runs alone" in check_assignable(["user-note", "user-note"])
    assert "runs alone" in check_assignable(["user-note", "click-button"])
    assert same_desktop(["user-note"], ["user-note"]) and not same_desktop(["user-other"], ["user-note"])
    assert not same_desktop(["click-button"], ["user-note"]) and same_desktop(["click-tab"], ["click-button"])
