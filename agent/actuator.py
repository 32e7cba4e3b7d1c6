"""Real input through the XTest extension (python-xlib): ~0.1 ms per event, no fixed delays.

The actuator knows nothing about safety: every action reaches it through the gate (agent/gate.py).
Coordinates here are absolute screen pixels.
"""

from __future__ import annotations

import os

from squirrel.errors import UserError

BUTTON = {"left": 1, "middle": 2, "right": 3, "scroll_up": 4, "scroll_down": 5}
MODIFIERS = {"ctrl": "Control_L", "shift": "Shift_L", "alt": "Alt_L", "super": "Super_L"}


class XTestActuator:
    def __init__(self, display: str | None = None):
        from Xlib import X, XK, display as xdisplay
        from Xlib.ext import xtest

        name = display or os.environ.get("DISPLAY")
        if not name:
            raise UserError("no X display: set DISPLAY or let Squirrel start a virtual one (no --display)")
        xa = os.environ.get("XAUTHORITY")
        if xa and not os.path.exists(xa):
            open(xa, "a").close()
        try:
            self.d = xdisplay.Display(name)
        except Exception as e:  # python-xlib raises several unrelated types here
            raise UserError(f"cannot open X display {name}: {e}") from e
        if not self.d.has_extension("XTEST"):
            raise UserError(f"display {name} has no XTEST extension; start Xvfb with +extension XTEST")
        self._X, self._XK, self._xtest = X, XK, xtest
        self.root = self.d.screen().root
        self.screen_size = (self.d.screen().width_in_pixels, self.d.screen().height_in_pixels)
        self._shift = self.d.keysym_to_keycode(XK.string_to_keysym("Shift_L"))

    # -- pointer -----------------------------------------------------------------------------
    def move(self, x: int, y: int) -> None:
        self._xtest.fake_input(self.d, self._X.MotionNotify, x=int(x), y=int(y))

    def button(self, button: str, press: bool, delay_ms: int = 0) -> None:
        """delay_ms: the server holds the event that long (XTest), giving it a later timestamp."""
        self._xtest.fake_input(self.d, self._X.ButtonPress if press else self._X.ButtonRelease, BUTTON[button],
                               time=delay_ms)

    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self.move(x, y)
        for i in range(count):
            # Apps (Qt among them) ignore a second press with the same timestamp as the first:
            # space the clicks of a double click by a few ms, as a hand would.
            self.button(button, True, delay_ms=5 if i else 0)
            self.button(button, False)
        self.sync()

    def drag(self, x: int, y: int, x2: int, y2: int, steps: int = 8) -> None:
        self.move(x, y)
        self.button("left", True)
        self.sync()
        for i in range(1, steps + 1):  # intermediate motion so apps see a real drag
            self.move(x + (x2 - x) * i // steps, y + (y2 - y) * i // steps)
            self.sync()
        self.button("left", False)
        self.sync()

    def scroll(self, x: int, y: int, up: bool, clicks: int = 1) -> None:
        self.move(x, y)
        for _ in range(clicks):
            self.button("scroll_up" if up else "scroll_down", True)
            self.button("scroll_up" if up else "scroll_down", False)
        self.sync()

    def pointer(self) -> tuple[int, int]:
        p = self.root.query_pointer()
        return p.root_x, p.root_y

    # -- keyboard ----------------------------------------------------------------------------
    def _keycode(self, keysym: int) -> tuple[int, bool]:
        code = self.d.keysym_to_keycode(keysym)
        if code == 0:
            raise ValueError(f"keysym {keysym:#x} is not on this keyboard map")
        return code, self.d.keycode_to_keysym(code, 0) != keysym

    def key(self, chord: str) -> None:
        """Press a key or chord: 'Return', 'ctrl+a', 'shift+Tab' (X keysym names)."""
        *mods, name = chord.split("+")
        keysym = self._XK.string_to_keysym(name)
        if keysym == 0:
            raise ValueError(f"unknown key {name!r}")
        mod_codes = [self.d.keysym_to_keycode(self._XK.string_to_keysym(MODIFIERS[m])) for m in mods]
        code, shifted = self._keycode(keysym)
        if shifted and "shift" not in mods:
            mod_codes.append(self._shift)
        for m in mod_codes:
            self._xtest.fake_input(self.d, self._X.KeyPress, m)
        self._xtest.fake_input(self.d, self._X.KeyPress, code)
        self._xtest.fake_input(self.d, self._X.KeyRelease, code)
        for m in reversed(mod_codes):
            self._xtest.fake_input(self.d, self._X.KeyRelease, m)
        self.sync()

    def type_text(self, text: str) -> None:
        """Type printable ASCII; Latin-1 keysyms equal the character's code point."""
        for ch in text:
            code, shifted = self._keycode(ord(ch))
            if shifted:
                self._xtest.fake_input(self.d, self._X.KeyPress, self._shift)
            self._xtest.fake_input(self.d, self._X.KeyPress, code)
            self._xtest.fake_input(self.d, self._X.KeyRelease, code)
            if shifted:
                self._xtest.fake_input(self.d, self._X.KeyRelease, self._shift)
        self.sync()

    def sync(self) -> None:
        """Round-trip to the server: every event above has been processed by it."""
        self.d.sync()

    def close(self) -> None:
        try:
            self.d.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
