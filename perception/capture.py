"""Grab a screen region as an RGB numpy frame: mss (XShmGetImage) with one connection kept open."""

from __future__ import annotations

import numpy as np

from squirrel.errors import UserError


class ScreenCapture:
    """`grab(left, top, width, height)` -> (H,W,3) uint8 RGB, C-contiguous; one X connection per object.

    Not for sharing between threads: give each thread its own ScreenCapture.
    """

    def __init__(self, display: str | None = None):
        import mss

        try:
            self._sct = mss.MSS(display=display) if display else mss.MSS()
        except mss.ScreenShotError as e:
            raise UserError(f"cannot open X display {display or '$DISPLAY'} for capture: {e}; "
                            "set DISPLAY to a running X server (squirrel doctor checks it)") from None
        self.display = display

    def grab(self, left: int, top: int, width: int, height: int) -> np.ndarray:
        shot = self._sct.grab({"left": int(left), "top": int(top), "width": int(width), "height": int(height)})
        h, w = shot.height, shot.width
        bgra = np.frombuffer(shot.raw, np.uint8).reshape(h, w, 4)
        return np.ascontiguousarray(bgra[:, :, 2::-1])  # BGRA -> RGB, one copy

    @property
    def performance_status(self) -> list[str]:
        """mss's notes (e.g. when MIT-SHM is unavailable and it fell back to XGetImage)."""
        return list(self._sct.performance_status)

    def close(self) -> None:
        self._sct.close()

    def __enter__(self) -> "ScreenCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
