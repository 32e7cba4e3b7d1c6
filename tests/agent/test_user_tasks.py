import subprocess
import sys
from pathlib import Path

import pytest

from agent.actions import Action, ActionType, find_span
from agent.tasks.user import TaskFileError, load_task, make_user_env, parse_task, run_checker

GOOD = """
name = "note"
instruction = "Type hello and press Enter"
command = ["python", "app.py"]
[window]
title = "Squirrel note"
[checker]
kind = "file_contains"
path = "/tmp/x"
text = "hello"
"""


def test_good_file_parses():
    spec = parse_task(GOOD)
    assert spec.name == "note" and spec.command == ["python", "app.py"] and spec.checker["kind"] == "file_contains"


@pytest.mark.parametrize("mutation,field", [
    (lambda t: t.replace('name = "note"', 'name = "no te!"'), "'name'"),
    (lambda t: t.replace('kind = "file_contains"', 'kind = "magic"'), "'checker.kind'"),
    (lambda t: t.replace('title = "Squirrel note"', ""), "'window'"),
    (lambda t: t.replace('command = ["python", "app.py"]', "command = []"), "'command'"),
    (lambda t: t.replace('text = "hello"', ""), "'checker.text'"),
    (lambda t: "max_steps = 0\n" + t, "'max_steps'"),
    (lambda t: "colour = 3\n" + t, "unknown field 'colour'"),
    (lambda t: t.replace("[window]", "[window"), "not valid TOML"),
])
def test_bad_files_name_the_field(mutation, field):
    with pytest.raises(TaskFileError) as e:
        parse_task(mutation(GOOD), "bad.toml")
    msg = str(e.value)
    assert msg.startswith("bad.toml: ") and field in msg and "\n" not in msg


def test_cli_check_gives_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe name")
    r = subprocess.run([sys.executable, "-m", "squirrel", "tasks", "--check", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "not UTF-8" in r.stderr


def test_checker_command_runs_without_shell_and_bounded(tmp_path):
    marker = tmp_path / "pwned"
    ok, out = run_checker({"kind": "command", "command": ["echo", f"hi; touch {marker}"]}, None)
    assert ok and not marker.exists() and "touch" in out
    ok, out = run_checker({"kind": "command", "command": [sys.executable, "-c", "print('x' * 10**6)"]}, None)
    assert ok and len(out) <= 64 * 1024
    ok, out = run_checker({"kind": "command", "command": ["sleep", "5"], "timeout_s": 0.2}, None)
    assert not ok and "timed out" in out


@pytest.mark.xvfb
def test_user_task_real_app_solved(xdisplay, tmp_path):
    out = tmp_path / "note.txt"
    app = Path(__file__).parent / "apps" / "note_app.py"
    task = tmp_path / "note.toml"
    task.write_text(GOOD.replace('["python", "app.py"]', f'["{sys.executable}", "{app}", "{out}"]')
                    .replace('"/tmp/x"', f'"{out}"'))
    spec = load_task(task)
    env = make_user_env(str(task), display=xdisplay.name)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["screen"].shape == (210, 160, 3)
        env.step(Action(ActionType.CLICK, 50, 20))
        env.step(Action(ActionType.TYPE, span=find_span(spec.instruction, "hello")))
        env.step(Action(ActionType.KEY, key="Return"))
        _, reward, terminated, _, info = env.step(Action(ActionType.DONE))
        assert terminated and info["success"] is True and reward > 0
        assert out.read_text() == "hello"
    finally:
        env.close()
    assert env.unwrapped.app is None


@pytest.mark.xvfb
def test_squirrel_learn_runs_a_user_task(tmp_path):
    out = tmp_path / "note.txt"
    app = Path(__file__).parent / "apps" / "note_app.py"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "note.toml").write_text(GOOD.replace('["python", "app.py"]', f'["{sys.executable}", "{app}", "{out}"]')
                                     .replace('"/tmp/x"', f'"{out}"').replace('title = "Squirrel note"',
                                                                            'title = "Squirrel note"\n') + "")
    tiny = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
    import os

    r = subprocess.run([sys.executable, "-m", "squirrel", "learn", "--tasks", "user-note", "--steps", "24",
                        "--home", str(tmp_path / "home"), "--no-progress", "--no-tensorboard", "--agent.encoder", tiny,
                        "--agent.rollout", "12"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, SQUIRREL_TASKS_DIR=str(tasks)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "user-note" in r.stdout


def _ask_task(tmp_path) -> Path:
    out = tmp_path / "note.txt"
    app = Path(__file__).parent / "apps" / "note_app.py"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    text = GOOD.replace('["python", "app.py"]', f'["{sys.executable}", "{app}", "{out}"]')
    text = text[: text.index("[checker]")] + '[checker]\nkind = "ask"\n'
    (tasks / "note.toml").write_text(text)
    return tasks


def test_headless_learn_refuses_a_person_judged_task(tmp_path):
    import os

    r = subprocess.run([sys.executable, "-m", "squirrel", "learn", "--tasks", "user-note", "--steps", "10",
                        "--home", str(tmp_path / "home")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SQUIRREL_TASKS_DIR=str(_ask_task(tmp_path))))
    assert r.returncode == 2 and "squirrel panel" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.xvfb
def test_a_person_judged_episode_waits_in_the_database_then_counts(tmp_path, monkeypatch):
    from agent.learn_cli import LearnConfig, LearnRun
    from agent.learner import AgentConfig
    from memory.db import AgentDB

    monkeypatch.setenv("SQUIRREL_TASKS_DIR", str(_ask_task(tmp_path)))
    tiny = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
    cfg = LearnConfig(tasks="user-note", steps=400, home=str(tmp_path / "home"), tensorboard=False, progress=False,
                      agent=AgentConfig(encoder=tiny, threads=1, rollout=16))
    run = LearnRun(cfg, ["user-note"])
    try:
        run.start()
        run.learner.episode_callbacks.append(lambda r: r.success is not None)  # stop at the first undecided one
        run.loop()
        (db_id,) = run._pending_db
        assert run.db.episode(db_id).outcome == "pending" and len(run.learner.pending) == 1
        assert "user-note" not in run.curve.episodes or run.curve.episodes["user-note"] == \
            sum(1 for e in run.db.episodes() if e.outcome in ("success", "failure"))
        before = run.curve.episodes.get("user-note", 0)
        assert run.judge(db_id, True)
        assert run.db.episode(db_id).outcome == "success" and not run.learner.pending
        assert run.curve.episodes["user-note"] == before + 1 and len(run.learner.sil) > 0
        assert any(s.reward > 0.5 for s in run.learner.buffer)  # the verdict's reward is in the next rollout
        assert not run.judge(10**6, True)
    finally:
        run.close()
