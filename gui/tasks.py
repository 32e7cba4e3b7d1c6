"""Tasks for the panel, Qt-free: where tasks come from, the assignment, and the new-task form.

A task source is anything with a `name` and a `list()` of `TaskInfo`; `SOURCES` is the list the
browser shows, so a new source (MiniWoB++ today, something else tomorrow) is one class and one line.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Imported here, on the UI thread, never first on a worker thread (concurrent first imports can deadlock).
from agent.registration import PLAYGROUND_TASKS
from agent.tasks.miniwob import DEFAULT_MAX_STEPS, MAX_STEPS, MINIWOB_TASKS
from agent.tasks.user import TaskFileError, parse_task, scan
from gui.models import Emitter

try:
    from playground.tasks import TASKS as PLAYGROUND_INFO  # descriptions; the names alone will do without it
except ImportError:
    PLAYGROUND_INFO = {}


@dataclass(frozen=True)
class TaskInfo:
    id: str  # what the learner is assigned: "click-button", "user-save-note", "miniwob-click-test"
    source: str
    description: str
    runnable: bool  # the learning loop can run it today
    path: str = ""  # the task file, for user tasks
    error: str = ""  # why a user task file is invalid


class TaskSource(Protocol):
    name: str

    def list(self) -> list[TaskInfo]: ...


class PlaygroundSource:
    name = "playground"

    def list(self) -> list[TaskInfo]:
        out = []
        for name in PLAYGROUND_TASKS:
            t = PLAYGROUND_INFO.get(name)
            desc = f"{t.description} (max {t.max_steps} steps)" if t is not None else ""
            out.append(TaskInfo(name, self.name, desc, True))
        return out


class FakeSource:
    """The display-free fake desktop: synthetic frames, for trying the panel and for tests."""

    name = "fake desktop"

    def list(self) -> list[TaskInfo]:
        return [TaskInfo("fake-click", self.name, "Click the coloured box (synthetic, no display)", True),
                TaskInfo("fake-type", self.name, "Type the word and press Enter (synthetic, no display)", True)]


class UserSource:
    """TOML task files in the user's task folder (agent/tasks/user.py)."""

    name = "user"

    def __init__(self, directory: Path | None = None):
        self.directory = directory

    def list(self) -> list[TaskInfo]:
        out = []
        for path, spec, err in scan(self.directory):
            if spec is None:
                out.append(TaskInfo(f"(invalid) {path.name}", self.name, err, False, str(path), err))
            else:
                out.append(TaskInfo(f"user-{spec.name}", self.name, spec.instruction, False, str(path)))
        return out


class MiniWoBSource:
    """MiniWoB++ tasks (ids `miniwob-<task>`), run in Chromium on the agent's desktop (agent/tasks/miniwob.py)."""

    name = "miniwob"

    def list(self) -> list[TaskInfo]:
        return [TaskInfo(f"miniwob-{n}", self.name, f"MiniWoB++ in Chromium (max {MAX_STEPS.get(n, DEFAULT_MAX_STEPS)} steps)",
                         True) for n in MINIWOB_TASKS]


def default_sources(tasks_dir: Path | None = None) -> list[TaskSource]:
    return [PlaygroundSource(), UserSource(tasks_dir), MiniWoBSource(), FakeSource()]


def list_all(sources: list[TaskSource]) -> tuple[list[TaskInfo], list[str]]:
    """Every source's tasks, and one message per source that failed (a broken source hides nothing else)."""
    tasks, errors = [], []
    for s in sources:
        try:
            tasks.extend(s.list())
        except Exception as e:  # noqa: BLE001 - shown in the panel, never fatal
            errors.append(f"task source {s.name}: {type(e).__name__}: {e}")
    return tasks, errors


def env_kind(task: str) -> str | None:
    """Which desktop the learning loop runs a task on: "fake", "playground", "miniwob", "user" (a valid TOML
    task in the user's folder: its own app), or None (unknown)."""
    if task in ("fake-click", "fake-type"):
        return "fake"
    if task.startswith("miniwob-") and task[len("miniwob-"):] in MINIWOB_TASKS:
        return "miniwob"
    if task.startswith("user-"):
        return "user" if any(spec is not None and spec.name == task[len("user-"):] for _, spec, _ in scan()) else None
    return "playground" if task in PLAYGROUND_TASKS else None


def same_desktop(a: list[str], b: list[str]) -> bool:
    """Can tasks `a` run on the desktop built for tasks `b`? (A user task's desktop is its own app's.)"""
    kind = env_kind(a[0])
    return kind == env_kind(b[0]) and (kind != "user" or a[0] == b[0])


def check_assignable(tasks: list[str]) -> str:
    """'' when the learning loop can run these tasks together, else a one-line reason."""
    if not tasks:
        return "assign at least one task"
    kinds = {t: env_kind(t) for t in tasks}
    bad = [t for t, k in kinds.items() if k is None]
    if bad:
        if bad[0].startswith("user-"):
            return f"{bad[0]}: no valid task file of that name in the tasks folder (the Tasks list says what is wrong)"
        return f"{bad[0]}: not a playground, MiniWoB++, user or fake-desktop task"
    if "user" in kinds.values() and len(tasks) > 1:
        return "a user-defined task runs alone (its app owns the desktop): assign one at a time"
    if len(set(kinds.values())) > 1:
        return f"{' and '.join(sorted(set(kinds.values())))} tasks need different desktops: assign one kind at a time"
    return ""


# -- assignment --------------------------------------------------------------------------------------
MODES = ("mix", "queue")


@dataclass
class Assignment:
    """The tasks given to the agent, each with a weight. The agent runs `schedule()` round-robin, one
    task per episode: "mix" interleaves them in proportion to the weights; "queue" runs each task
    `weight` episodes in a row, in order."""

    entries: list[list] = field(default_factory=list)  # [task, weight]
    mode: str = "mix"

    def __post_init__(self):
        self.changed = Emitter()

    def add(self, task: str, weight: int = 1) -> None:
        for e in self.entries:
            if e[0] == task:
                e[1] += weight
                break
        else:
            self.entries.append([task, max(1, int(weight))])
        self.changed.emit()

    def remove(self, task: str) -> None:
        self.entries = [e for e in self.entries if e[0] != task]
        self.changed.emit()

    def set_weight(self, task: str, weight: int) -> None:
        for e in self.entries:
            if e[0] == task:
                e[1] = max(1, int(weight))
        self.changed.emit()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.changed.emit()

    def clear(self) -> None:
        self.entries = []
        self.changed.emit()

    def tasks(self) -> list[str]:
        return [t for t, _ in self.entries]

    def schedule(self) -> list[str]:
        if self.mode == "queue":
            return [t for t, w in self.entries for _ in range(w)]
        # smooth weighted round-robin: each task as often as its weight, spread evenly
        total = sum(w for _, w in self.entries)
        cur = {t: 0 for t, _ in self.entries}
        out = []
        for _ in range(total):
            for t, w in self.entries:
                cur[t] += w
            best = max(self.entries, key=lambda e: cur[e[0]])[0]
            cur[best] -= total
            out.append(best)
        return out


# -- the new-task form --------------------------------------------------------------------------------
CHECKER_KINDS = ("command", "file_contains", "window_title", "ask")


def _q(s: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML for these characters)."""
    return json.dumps(s, ensure_ascii=False)


@dataclass
class TaskForm:
    """The fields of the new-task form as the person typed them; `to_toml()` composes the file."""

    name: str = ""
    instruction: str = ""
    command: str = ""  # program and arguments, shell-style quoting
    max_steps: int = 10
    window_by: str = "title"  # "title" | "geometry"
    window_title: str = ""
    geometry: str = ""  # "x, y, width, height"
    checker: str = "ask"
    checker_command: str = ""
    checker_path: str = ""
    checker_text: str = ""
    checker_title: str = ""

    def to_toml(self) -> str:
        """The task file's text. Raises ValueError (one line, naming the field) for what TOML cannot say."""
        lines = [f"name = {_q(self.name)}", f"instruction = {_q(self.instruction)}",
                 f"command = {self._argv(self.command, 'command')}", f"max_steps = {int(self.max_steps)}", "", "[window]"]
        if self.window_by == "geometry":
            try:
                g = [int(v) for v in self.geometry.replace(",", " ").split()]
            except ValueError:
                raise ValueError("field 'window.geometry' must be four whole numbers: x, y, width, height") from None
            lines.append(f"geometry = {g}")
        else:
            lines.append(f"title = {_q(self.window_title)}")
        lines += ["", "[checker]", f"kind = {_q(self.checker)}"]
        if self.checker == "command":
            lines.append(f"command = {self._argv(self.checker_command, 'checker.command')}")
        elif self.checker == "file_contains":
            lines += [f"path = {_q(self.checker_path)}", f"text = {_q(self.checker_text)}"]
        elif self.checker == "window_title":
            lines.append(f"title = {_q(self.checker_title)}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _argv(text: str, name: str) -> str:
        try:
            argv = shlex.split(text)
        except ValueError as e:
            raise ValueError(f"field '{name}': {e}") from None
        return "[" + ", ".join(_q(a) for a in argv) + "]"

    def validate(self) -> str:
        """'' when the form makes a valid task file, else the one-line reason (the field is named)."""
        try:
            parse_task(self.to_toml(), "task")
        except (ValueError, TaskFileError) as e:
            return str(e).removeprefix("task: ")
        return ""

    def save(self, directory: Path, overwrite: bool = False) -> Path:
        """Write NAME.toml into `directory` (atomically); refuses to replace a file unless `overwrite`."""
        err = self.validate()
        if err:
            raise ValueError(err)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.toml"
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose another name or overwrite it")
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        os.replace(tmp, path)
        return path
