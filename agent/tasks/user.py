"""User-defined tasks: a TOML file names the instruction, the app to launch, its window and a checker.

    name = "save-note"                      # letters, digits, '-' and '_'
    instruction = "Type hello and press Enter"
    command = ["my-app", "--new"]           # run without a shell, on the agent's display
    max_steps = 10                          # optional (default 10)
    size = [160, 210]                       # optional: task area captured, from the window's top-left
    [window]
    title = "My App"                        # a window whose title contains this ...
    # geometry = [x, y, width, height]     # ... or a fixed screen rectangle
    [checker]
    kind = "command"                        # "command" | "file_contains" | "window_title" | "ask"
    command = ["test", "-s", "/tmp/out"]    # kind=command: exit code 0 means success
    # path = "/tmp/out"; text = "hello"     # kind=file_contains
    # title = "Saved"                       # kind=window_title: a window whose title contains it
    timeout_s = 10                          # optional, for kind=command

The checker runs when the agent declares done. "ask" leaves the outcome to a person (the panel's
thumbs up/down): the episode ends with success None and `info["ask_person"]`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym

from agent.actions import Action, ActionType
from agent.env import Desktop, ScreenEnv, SettleConfig
from squirrel.errors import UserError

CHECKERS = ("command", "file_contains", "window_title", "ask")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_OUTPUT = 64 * 1024  # bytes of checker output kept
MAX_FILE = 256 * 1024  # bytes of a task file
TASKS_DIR_ENV = "SQUIRREL_TASKS_DIR"


class TaskFileError(UserError):
    pass


@dataclass
class TaskSpec:
    name: str
    instruction: str
    command: list[str]
    path: str = ""
    max_steps: int = 10
    size: tuple[int, int] = (160, 210)
    window_title: str = ""
    window_geometry: tuple[int, int, int, int] | None = None
    checker: dict = field(default_factory=dict)


def _want(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise TaskFileError(f"{path}: {msg}")


def _str_list(v, path: str, fieldname: str) -> list[str]:
    if isinstance(v, str):
        v = v.split()
    _want(isinstance(v, list) and v and all(isinstance(x, str) and x and "\0" not in x for x in v), path,
          f"field '{fieldname}' must be a non-empty list of strings (the program and its arguments)")
    return list(v)


def parse_task(text: str, path: str = "<task>") -> TaskSpec:
    """Validate a task file's text; a bad file raises TaskFileError naming the field."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskFileError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise TaskFileError(f"{path}: not a task file (arrays or tables nested too deeply)") from None
    known = {"name", "instruction", "command", "max_steps", "size", "window", "checker"}
    extra = sorted(set(d) - known)
    _want(not extra, path, f"unknown field '{extra[0] if extra else ''}' (known: {', '.join(sorted(known))})")
    for f in ("name", "instruction", "command", "window", "checker"):
        _want(f in d, path, f"missing field '{f}'")
    _want(isinstance(d["name"], str) and NAME_RE.match(d["name"]), path,
          "field 'name' must be 1-64 letters, digits, '-' or '_'")
    _want(isinstance(d["instruction"], str) and 0 < len(d["instruction"]) <= 512 and d["instruction"].isprintable(),
          path, "field 'instruction' must be printable text of 1-512 characters")
    spec = TaskSpec(d["name"], d["instruction"], _str_list(d["command"], path, "command"), path)
    if "max_steps" in d:
        _want(isinstance(d["max_steps"], int) and 1 <= d["max_steps"] <= 1000, path,
              "field 'max_steps' must be a whole number from 1 to 1000")
        spec.max_steps = d["max_steps"]
    if "size" in d:
        s = d["size"]
        _want(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and 16 <= v <= 4096 for v in s), path,
              "field 'size' must be [width, height] in pixels (16-4096)")
        spec.size = (s[0], s[1])
    w = d["window"]
    _want(isinstance(w, dict) and (("title" in w) != ("geometry" in w)), path,
          "table 'window' needs exactly one of 'title' or 'geometry'")
    if "title" in w:
        _want(isinstance(w["title"], str) and 0 < len(w["title"]) <= 256, path, "field 'window.title' must be text")
        spec.window_title = w["title"]
    else:
        g = w["geometry"]
        _want(isinstance(g, list) and len(g) == 4 and all(isinstance(v, int) and 0 <= v <= 16384 for v in g), path,
              "field 'window.geometry' must be [x, y, width, height]")
        spec.window_geometry = tuple(g)
        spec.size = (min(spec.size[0], g[2]), min(spec.size[1], g[3]))
    c = d["checker"]
    _want(isinstance(c, dict) and c.get("kind") in CHECKERS, path,
          f"field 'checker.kind' must be one of {', '.join(CHECKERS)}")
    if c["kind"] == "command":
        c = dict(c, command=_str_list(c.get("command"), path, "checker.command"))
        t = c.get("timeout_s", 10)
        _want(isinstance(t, (int, float)) and 0 < t <= 600, path, "field 'checker.timeout_s' must be 0-600 seconds")
    elif c["kind"] == "file_contains":
        _want(isinstance(c.get("path"), str) and c["path"] and "\0" not in c["path"], path,
              "field 'checker.path' must be a file path")
        _want(isinstance(c.get("text"), str) and c["text"], path, "field 'checker.text' must be non-empty text")
    elif c["kind"] == "window_title":
        _want(isinstance(c.get("title"), str) and c["title"], path, "field 'checker.title' must be non-empty text")
    spec.checker = c
    return spec


def load_task(path: str | Path) -> TaskSpec:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise TaskFileError(f"{p}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_FILE:
        raise TaskFileError(f"{p}: larger than {MAX_FILE // 1024} KiB; a task file is a few lines")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (some editors write one) is fine
    except UnicodeDecodeError:
        raise TaskFileError(f"{p}: not UTF-8 text") from None
    return parse_task(text, str(p))


def tasks_dir() -> Path:
    return Path(os.environ.get(TASKS_DIR_ENV) or Path.home() / ".config" / "squirrel" / "tasks")


def scan(directory: Path | None = None) -> list[tuple[Path, TaskSpec | None, str]]:
    """Every *.toml in the tasks folder: (path, spec or None, error message)."""
    out = []
    d = directory or tasks_dir()
    for p in sorted(d.glob("*.toml")) if d.is_dir() else []:
        try:
            out.append((p, load_task(p), ""))
        except TaskFileError as e:
            out.append((p, None, str(e)))
    return out


def register_user_tasks(directory: Path | None = None) -> list[str]:
    ids = []
    for p, spec, _ in scan(directory):
        if spec is not None:
            env_id = f"squirrel/user-{spec.name}-v0"
            if env_id not in gym.registry:
                gym.register(env_id, entry_point="agent.tasks.user:make_user_env", kwargs={"path": str(p)})
            ids.append(env_id)
    return ids


def make_user_env(path: str, gate=None, stop=None, **kwargs) -> gym.Env:
    from agent.gate import SafetyGate

    return SafetyGate(UserTaskEnv(load_task(path), **kwargs), gate, stop)


# -- X window lookup ---------------------------------------------------------------------------------
def find_window(actuator, title: str) -> tuple[int, int, int, int] | None:
    """Screen rectangle of a mapped window whose title contains `title`."""
    d = actuator.d
    net_name, utf8 = d.intern_atom("_NET_WM_NAME"), d.intern_atom("UTF8_STRING")
    stack = [actuator.root]
    while stack:
        w = stack.pop()
        try:
            prop = w.get_full_property(net_name, utf8)
            name = prop.value.decode(errors="replace") if prop else (w.get_wm_name() or "")
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            attrs = w.get_attributes()
            if title in name and attrs.map_state == 2:  # IsViewable
                g = w.get_geometry()
                t = w.translate_coords(actuator.root, 0, 0)
                return (-t.x, -t.y, g.width, g.height)
            stack.extend(w.query_tree().children)
        except Exception:  # noqa: BLE001 - windows vanish while we walk the tree
            continue
    return None


def run_checker(c: dict, actuator) -> tuple[bool | None, str]:
    """(success, detail). The command runs without a shell, with a timeout; its output is bounded."""
    kind = c["kind"]
    if kind == "ask":
        return None, "ask the person"
    if kind == "window_title":
        return find_window(actuator, c["title"]) is not None, ""
    if kind == "file_contains":
        try:
            with open(c["path"], "rb") as f:
                data = f.read(16 * 1024 * 1024)
        except OSError as e:
            return False, f"cannot read {c['path']}: {e.strerror}"
        return c["text"].encode() in data, ""
    try:
        code, out = _run_bounded(c["command"], c.get("timeout_s", 10))
    except FileNotFoundError:
        raise UserError(f"checker command not found: {c['command'][0]} (fix 'checker.command' in the task file)") from None
    except OSError as e:
        raise UserError(f"cannot run checker command {c['command'][0]}: {e.strerror} (fix 'checker.command' in the task "
                        "file)") from None
    if code is None:
        return False, f"checker timed out after {c.get('timeout_s', 10)} s"
    return code == 0, out.decode(errors="replace")


def _run_bounded(command: list[str], timeout: float) -> tuple[int | None, bytes]:
    """Run without a shell; keep the last MAX_OUTPUT bytes of its output (stdout and stderr together) however much
    it writes; after `timeout` kill it and everything it started. (exit code or None on timeout, output)."""
    import selectors

    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out, end, eof = bytearray(), time.monotonic() + timeout, False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not eof and time.monotonic() < end:
            if sel.select(end - time.monotonic()):
                chunk = os.read(proc.stdout.fileno(), 65536)
                eof = not chunk
                out += chunk
                del out[:-MAX_OUTPUT]
    try:
        if eof:
            return proc.wait(max(0.0, end - time.monotonic())), bytes(out)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.returncode is None:  # out of time: it and everything it started go
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        proc.stdout.close()
    return None, bytes(out)


class UserTaskEnv(ScreenEnv):
    """A user-defined task: launches the app each episode, finds its window, checks on done."""

    def __init__(self, spec: TaskSpec, desktop: Desktop | None = None, display: str | None = None,
                 step_cost: float = 0.01, settle: SettleConfig | None = None, render_mode: str | None = None,
                 window_timeout_s: float = 15.0):
        super().__init__(desktop or Desktop(display, playground=False), desktop is None, *spec.size, step_cost,
                         settle or SettleConfig(interval_ms=30.0, cap_ms=1000.0), render_mode)
        self.spec, self.task, self.window_timeout_s = spec, f"user-{spec.name}", window_timeout_s
        self.app: subprocess.Popen | None = None

    def _start_task(self, seed, options):
        self._stop_app()
        try:
            self.app = subprocess.Popen(self.spec.command, env=self.desktop.child_env(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise UserError(f"{self.spec.path}: cannot start {self.spec.command[0]}: {e.strerror} (fix 'command')") from None
        if self.spec.window_geometry is not None:
            return self.spec.instruction, tuple(self.spec.window_geometry[:2]), self.spec.max_steps
        end = time.monotonic() + self.window_timeout_s
        while time.monotonic() < end:
            rect = find_window(self.desktop.actuator, self.spec.window_title)
            if rect is not None:
                return self.spec.instruction, rect[:2], self.spec.max_steps
            if self.app.poll() is not None:
                break
            time.sleep(0.05)
        self._stop_app()
        raise UserError(f"{self.spec.path}: no window titled {self.spec.window_title!r} appeared within "
                        f"{self.window_timeout_s:.0f} s (check 'command' and 'window.title')")

    def _status(self, a: Action | None) -> dict:
        if a is None or a.type != ActionType.DONE:
            return {"done": False, "success": None}
        success, detail = run_checker(self.spec.checker, self.desktop.actuator)
        out = {"done": True, "success": success, "checker_output": detail}
        if self.spec.checker["kind"] == "ask":
            out["ask_person"] = True
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        if self.spec.checker["kind"] == "ask":
            info["ask_person"] = True  # the learner holds the episode until a person's verdict
        return obs, info

    def _stop_app(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            try:
                self.app.wait(3)
            except subprocess.TimeoutExpired:
                self.app.kill()
                self.app.wait()
        self.app = None

    def close(self):
        self._stop_app()
        super().close()
