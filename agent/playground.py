"""Client side of the playground host (playground/host.py), which runs as its own process.

The agent never imports the playground: it starts the host on its display and talks JSON lines
over a Unix socket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from squirrel.errors import UserError

WINDOW_ORIGIN = (40, 40)  # away from the fail-safe corners


class PlaygroundHost:
    """Start (and own) a playground host process on `display_env`'s display."""

    def __init__(self, display_env: dict, origin: tuple[int, int] = WINDOW_ORIGIN, timeout_s: float = 30.0):
        self._tmp = tempfile.mkdtemp(prefix="squirrel-pg-")
        self.path = os.path.join(self._tmp, "host.sock")
        env = dict(display_env, QT_QPA_PLATFORM="xcb")
        self.log_path = os.path.join(self._tmp, "host.log")
        self._log = open(self.log_path, "w")  # the app's stderr goes to a file: a pipe nobody reads would fill and block it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "playground.host", "--socket", self.path, "--x", str(origin[0]), "--y", str(origin[1])],
            env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # "ready" once the server listens
        if line.strip() != "ready":
            self.proc.wait(5) if self.proc.poll() is None else None
            err = self.log_tail()
            self.close()
            raise UserError(f"the playground app did not start on {env.get('DISPLAY')}: {err.strip() or 'no output'} "
                            "(run `squirrel doctor`)")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(self.path)
        self._file = self.sock.makefile("rb")

    def call(self, cmd: str, **kw) -> dict:
        self.sock.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        line = self._file.readline()
        if not line:
            raise RuntimeError(f"the playground app closed the connection (exit code {self.proc.poll()}): {self.log_tail()}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"playground: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def log_tail(self, n: int = 800) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:].strip()
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if getattr(self, "sock", None) is not None:
            try:
                self.call("quit")
            except Exception:  # noqa: BLE001 - it may already be gone
                pass
            self._file.close()
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
