"""The one gate every action passes (DESIGN.md decision 10, STYLE.md 13).

Checks, in order: the stop flag, the fail-safe corners, the target window (on a display Squirrel did
not start: it must still be there, every point inside it, and key presses only while the keyboard
goes to it), the task window (every point inside it), the key denylist and allow-list, then the
action rate (the gate waits for the rate to allow the action; it never lets a burst through).
Refused actions are reported in `info["refused"]` and never reach the actuator. Once stopped, a
reset raises `Stopped` (a KeyboardInterrupt, so every entry point saves and exits as on Ctrl-C); a
reset without its target window raises a UserError.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import gymnasium as gym

from agent.actions import KEYS, POINTER_TYPES, Action, ActionType
from squirrel.errors import UserError

DENIED_CHORDS = (
    "ctrl+alt+Delete", "ctrl+alt+BackSpace", "alt+F4", "ctrl+q", "ctrl+w", "alt+Tab", "super", "Super_L", "Super_R",
    *(f"ctrl+alt+F{i}" for i in range(1, 13)),
)


@dataclass
class GateConfig:
    max_actions_per_s: float = 100.0
    """Cap on actions per second; faster requests wait."""
    allowed_keys: tuple[str, ...] = KEYS
    """Keys and chords the agent may press."""
    denied_chords: tuple[str, ...] = DENIED_CHORDS
    """Chords never sent, even if allowed elsewhere."""
    failsafe: bool = True
    """Stop when the real pointer sits in a screen corner (pyautogui's fail-safe)."""
    target_window: str = ""
    """Title (or part of it) of the only window the agent may act on; required on a display Squirrel did not start."""


class Stopped(KeyboardInterrupt):
    """The gate was stopped (panel, signal, fail-safe corner): acting is over, save and exit as on Ctrl-C."""


class TargetWindow:
    """The window, found by its title, that the agent may act on (python-xlib, on the actuator's display)."""

    def __init__(self, actuator, title: str):
        self.actuator, self.title = actuator, title
        self.window = None

    def _find(self):
        d = self.actuator.d
        net_name, utf8 = d.intern_atom("_NET_WM_NAME"), d.intern_atom("UTF8_STRING")
        stack = [self.actuator.root]
        while stack:
            w = stack.pop()
            try:
                prop = w.get_full_property(net_name, utf8)
                name = prop.value if prop else (w.get_wm_name() or "")
                name = name.decode(errors="replace") if isinstance(name, bytes) else name
                if self.title in name and w.get_attributes().map_state == 2:  # IsViewable
                    return w
                stack.extend(w.query_tree().children)
            except Exception:  # noqa: BLE001 - windows vanish while we walk the tree
                continue
        return None

    def rect(self) -> tuple[int, int, int, int] | None:
        """(x, y, width, height) on the screen while the window is shown; None once it is gone."""
        for _ in range(2):  # the window we knew, else look for it again
            if self.window is None:
                self.window = self._find()
                if self.window is None:
                    return None
            try:
                if self.window.get_attributes().map_state == 2:
                    g = self.window.get_geometry()
                    t = self.window.translate_coords(self.actuator.root, 0, 0)
                    return (-t.x, -t.y, g.width, g.height)
            except Exception:  # noqa: BLE001 - BadWindow: it was destroyed
                pass
            self.window = None
        return None

    def has_keyboard(self, rect: tuple[int, int, int, int]) -> bool:
        """Key presses would reach this window: it (or a window inside it) has the focus, or the focus
        follows the pointer (PointerRoot / None) and the pointer is inside it."""
        focus = self.actuator.d.get_input_focus().focus
        if isinstance(focus, int):  # X.NONE (0) or X.PointerRoot (1): keys go where the pointer is
            return _inside(self.actuator.pointer(), rect)
        try:
            g = focus.get_geometry()
            t = focus.translate_coords(self.actuator.root, 0, 0)
        except Exception:  # noqa: BLE001
            return False
        x, y = -t.x, -t.y
        return _inside((x, y), rect) and _inside((x + g.width - 1, y + g.height - 1), rect)


def _inside(p: tuple[int, int], rect: tuple[int, int, int, int]) -> bool:
    x, y, w, h = rect
    return x <= p[0] < x + w and y <= p[1] < y + h


class StopFlag:
    """A stop any thread (set()) or any process (touching `path`) can raise. It stays raised."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()
        if self.path:
            with open(self.path, "a"):
                pass

    def is_set(self) -> bool:
        return self._event.is_set() or bool(self.path and os.path.exists(self.path))

    def clear(self) -> None:
        self._event.clear()
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)


class SafetyGate(gym.Wrapper):
    def __init__(self, env: gym.Env, config: GateConfig | None = None, stop: StopFlag | None = None):
        super().__init__(env)
        self.config = config or GateConfig()
        self.stop = stop or StopFlag()
        self._next_ok = 0.0
        self.refused = 0
        self._target: TargetWindow | None = None

    def target(self) -> TargetWindow | None:
        """The target window, when the gate has one (config.target_window)."""
        if not self.config.target_window:
            return None
        if self._target is None or self._target.title != self.config.target_window:
            desktop = getattr(self.env.unwrapped, "desktop", None)
            if desktop is None:
                raise UserError("a target window needs a desktop with a display (this env has none)")
            self._target = TargetWindow(desktop.actuator, self.config.target_window)
        return self._target

    def check(self, a: Action) -> str | None:
        """Why `a` must not run, or None when it may."""
        if self.stop.is_set():
            return "stopped"
        if self.config.failsafe and self._pointer_in_corner():
            self.stop.set()
            return "fail-safe: pointer in a screen corner"
        ox, oy, w, h = self.env.unwrapped.window_rect()
        points = [] if a.type not in POINTER_TYPES else [(a.x, a.y)] + ([(a.x2, a.y2)] if a.type == ActionType.DRAG else [])
        target = self.target()
        if target is not None:
            rect = target.rect()
            if rect is None:
                return f"target window gone: no window titled {target.title!r}"
            for x, y in points:
                if not _inside((ox + x, oy + y), rect):
                    return f"outside the target window: ({ox + x}, {oy + y}) not in {rect}"
            if a.type in (ActionType.KEY, ActionType.TYPE) and not target.has_keyboard(rect):
                return f"the keyboard does not go to the target window {target.title!r}"
        for x, y in points:
            if not (0 <= x < w and 0 <= y < h):
                return f"outside the task window: ({x}, {y}) not in {w}x{h}"
        if a.type == ActionType.KEY:
            if a.key in self.config.denied_chords or "super" in a.key.split("+"):
                return f"denied chord: {a.key}"
            if a.key not in self.config.allowed_keys:
                return f"key not allowed: {a.key}"
        return None

    def _pointer_in_corner(self) -> bool:
        desktop = getattr(self.env.unwrapped, "desktop", None)
        if desktop is None:
            return False
        x, y = desktop.actuator.pointer()
        sw, sh = desktop.actuator.screen_size
        return (x, y) in ((0, 0), (sw - 1, 0), (0, sh - 1), (sw - 1, sh - 1))

    def _throttle(self) -> None:
        now = time.monotonic()
        while now < self._next_ok:
            time.sleep(self._next_ok - now)
            now = time.monotonic()
        self._next_ok = now + 1.0 / self.config.max_actions_per_s

    def step(self, action):
        a = action if isinstance(action, Action) else Action.from_gym(action)
        reason = self.check(a)
        if reason is not None:
            self.refused += 1
            obs, reward, terminated, truncated, info = self.env.unwrapped.skip_step(reason)
            ends = reason == "stopped" or reason.startswith(("fail-safe", "target window gone"))
            return obs, reward, terminated, truncated or ends, info
        self._throttle()
        return self.env.step(a)

    def reset(self, **kwargs):
        if self.stop.is_set():
            raise Stopped("the agent was stopped; clear the stop flag to act again")
        out = self.env.reset(**kwargs)  # (the task may open its window now: the playground, user tasks)
        target = self.target()
        if target is not None and target.rect() is None:
            raise UserError(f"no window titled {target.title!r} is shown: the agent acts only on its target window "
                            "(open it, or fix --target-window)")
        return out
