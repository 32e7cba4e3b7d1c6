"""Virtual X displays (Xvfb) that Squirrel starts, owns and stops.

Xvfb picks the first free display number itself (`-displayfd`), so two processes never race for
one, and we never attach to a display we did not start. Each display gets its own empty
XAUTHORITY file (python-xlib raises XauthError without one).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from squirrel.errors import UserError


@dataclass
class VirtualDisplay:
    """A running Xvfb; use as a context manager or call start()/stop()."""

    width: int = 1024
    height: int = 768
    depth: int = 24
    start_timeout_s: float = 10.0
    name: str = ""  # ":N" once started
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _tmp: str = field(default="", repr=False)

    def start(self) -> "VirtualDisplay":
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            raise UserError("Xvfb is not installed; run scripts/setup (or apt-get install xvfb).")
        self._tmp = tempfile.mkdtemp(prefix="squirrel-x-")
        open(self.xauthority, "w").close()
        r, w = os.pipe()
        self._proc = subprocess.Popen(
            [xvfb, "-displayfd", str(w), "-screen", "0", f"{self.width}x{self.height}x{self.depth}",
             "-nolisten", "tcp", "-noreset", "+extension", "XTEST", "-auth", self.xauthority],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        os.close(w)
        try:
            number = self._read_display_number(r)
        finally:
            os.close(r)
        self.name = f":{number}"
        return self

    def _read_display_number(self, fd: int) -> str:
        deadline, buf = time.monotonic() + self.start_timeout_s, b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")[-300:] if self._proc.poll() is not None else ""
                self.stop()
                raise UserError(f"Xvfb did not start within {self.start_timeout_s:.0f}s. {err.strip()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 64)
                if not chunk:
                    continue
                buf += chunk
        return buf.decode().strip()

    @property
    def xauthority(self) -> str:
        return os.path.join(self._tmp, "Xauthority")

    def env(self, base: dict | None = None) -> dict:
        """Environment for a child process that should use this display."""
        env = dict(os.environ if base is None else base)
        env["DISPLAY"], env["XAUTHORITY"] = self.name, self.xauthority
        env.pop("WAYLAND_DISPLAY", None)
        return env

    def activate(self) -> None:
        """Point this process's DISPLAY/XAUTHORITY at the virtual display."""
        os.environ["DISPLAY"], os.environ["XAUTHORITY"] = self.name, self.xauthority

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""

    def __enter__(self) -> "VirtualDisplay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class display_for:
    """Context: use `name` if given (an existing display the user named), else start our own."""

    def __init__(self, name: str | None = None, width: int = 1024, height: int = 768):
        self.requested, self.width, self.height = name, width, height
        self.vd: VirtualDisplay | None = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> str:
        self._saved = {k: os.environ.get(k) for k in ("DISPLAY", "XAUTHORITY")}
        if self.requested:
            os.environ["DISPLAY"] = self.requested
            return self.requested
        self.vd = VirtualDisplay(self.width, self.height).start()
        self.vd.activate()
        return self.vd.name

    def __exit__(self, *exc) -> None:
        if self.vd is not None:
            self.vd.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
