"""The agent process as the panel sees it (Qt-free): start it, send it commands, hear its events on a
reader thread, and stop it for sure: the gate's stop flag at once, SIGTERM after `grace` seconds,
SIGKILL after `kill_after` more."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            return "\n".join(f.read().decode(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class AgentProcess:
    """One run of `python -m gui.agent_process`. `on_event(msg)` is called on the reader thread, for
    each event and finally with ("exit", returncode, log tail) when the process is gone."""

    def __init__(self, on_event: Callable[[tuple], None], command: list[str] | None = None):
        self.on_event = on_event
        self.command = command or [sys.executable, "-m", "gui.agent_process"]  # + CMD_FD EVT_FD
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.stop_file = ""
        self._cmd: Connection | None = None
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, argv: list[str], log_path: Path, stop_file: str, fps: float = 15.0) -> None:
        """Start the agent with `squirrel learn` options `argv`; its output goes to `log_path`."""
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        self.log_path, self.stop_file = Path(log_path), stop_file
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command + [str(cmd_r), str(evt_w)],
                                         pass_fds=(cmd_r, evt_w), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        os.close(cmd_r)
        os.close(evt_w)
        self._cmd = Connection(cmd_w, readable=False)
        evt = Connection(evt_r, writable=False)
        self.send("start", {"argv": list(argv), "stop_file": stop_file, "fps": fps})
        threading.Thread(target=self._read, args=(evt,), name="agent-events", daemon=True).start()

    def send(self, *msg) -> bool:
        with self._lock:
            if self._cmd is None:
                return False
            try:
                self._cmd.send(msg)
                return True
            except (OSError, ValueError):
                return False

    def _read(self, evt: Connection) -> None:
        while True:
            try:
                msg = evt.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # noqa: BLE001 - a torn message from a killed process
                self.on_event(("error", f"unreadable message from the agent: {e}", ""))
                break
            self.on_event(msg)
        evt.close()
        code = self.proc.wait()
        with self._lock:
            if self._cmd is not None:
                self._cmd.close()
                self._cmd = None
        self.on_event(("exit", code, log_tail(self.log_path)))

    def stop(self, grace: float = 1.0, kill_after: float = 3.0) -> None:
        """Stop now: the gate refuses every action from this moment; the process saves and exits, or is
        terminated after `grace` seconds and killed `kill_after` seconds later. Never blocks."""
        if self.stop_file:
            with open(self.stop_file, "a"):
                pass
        self.send("stop")
        if self._stopping or self.proc is None:
            return
        self._stopping = True
        threading.Thread(target=self._escalate, args=(grace, kill_after), name="agent-stop", daemon=True).start()

    def _escalate(self, grace: float, kill_after: float) -> None:
        for wait, act in ((grace, self.proc.terminate), (kill_after, self.proc.kill)):
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                act()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
