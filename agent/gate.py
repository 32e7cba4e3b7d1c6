"""The one gate every action passes (DESIGN.md decision 10, STYLE.md 13).

Checks, in order: the stop flag, the fail-safe corners, the task window (every point inside it),
the key denylist and allow-list, then the action rate (the gate waits for the rate to allow the
action; it never lets a burst through). Refused actions are reported in `info["refused"]` and never
reach the actuator.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import gymnasium as gym

from agent.actions import KEYS, POINTER_TYPES, Action, ActionType

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

    def check(self, a: Action) -> str | None:
        """Why `a` must not run, or None when it may."""
        if self.stop.is_set():
            return "stopped"
        if self.config.failsafe and self._pointer_in_corner():
            self.stop.set()
            return "fail-safe: pointer in a screen corner"
        _, _, w, h = self.env.unwrapped.window_rect()
        if a.type in POINTER_TYPES:
            points = [(a.x, a.y)] + ([(a.x2, a.y2)] if a.type == ActionType.DRAG else [])
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
            return obs, reward, terminated, truncated or reason == "stopped" or reason.startswith("fail-safe"), info
        self._throttle()
        return self.env.step(a)

    def reset(self, **kwargs):
        if self.stop.is_set():
            raise RuntimeError("the agent was stopped; clear the stop flag to act again")
        return self.env.reset(**kwargs)
