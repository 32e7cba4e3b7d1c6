"""Client side of the playground host (playground/host.py), which runs as its own process.

The agent never imports the playground: it starts the host on its display and talks JSON lines
over a Unix socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from squirrel.errors import UserError

WINDOW_ORIGIN = (40, 40)  # away from the fail-safe corners


class PlaygroundHost:
    """Start (and own) a playground host process on `display_env`'s display."""

    def __init__(self, display_env: dict, origin: tuple[int, int] = WINDOW_ORIGIN, timeout_s: float = 30.0):
        self._tmp = tempfile.mkdtemp(prefix="squirrel-pg-")
        self.path = os.path.join(self._tmp, "host.sock")
        env = dict(display_env, QT_QPA_PLATFORM="xcb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "playground.host", "--socket", self.path, "--x", str(origin[0]), "--y", str(origin[1])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # "ready" once the server listens
        if line.strip() != "ready":
            err = self.proc.stderr.read()[-500:] if self.proc.poll() is not None else ""
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
            raise RuntimeError(f"the playground app closed the connection (exit code {self.proc.poll()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"playground: {reply['error']}\n{reply.get('trace', '')}")
        return reply

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
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self._tmp) if os.path.isdir(self._tmp) and not os.listdir(self._tmp) else None


def wait_until(pred, timeout_s: float, poll_s: float = 0.001) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(poll_s)
    return pred()
