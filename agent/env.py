"""The desktop as a Gymnasium env (DESIGN.md decision 1).

`Desktop` bundles what acting needs: an X display (a private Xvfb unless one is named), the
playground app on it, an XTest actuator and an mss capture. Several envs (one per task) may share
one desktop. `DesktopEnv` is one task on a desktop: observation = the task window's pixels, the
instruction text and the cursor; reward +1 success / -1 failure minus a small step cost;
`terminated` when the task's checker decides, `truncated` when the step budget runs out.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from agent.actions import Action, ActionType, action_space, observation_space, span_text
from agent.actuator import XTestActuator
from agent.display import VirtualDisplay
from agent.playground import PlaygroundHost

SIZES = {"small": (160, 210), "large": (320, 420)}


@dataclass
class SettleConfig:
    interval_ms: float = 2.0
    """Screen must be unchanged over this interval to count as settled."""
    cap_ms: float = 300.0
    """Give up waiting after this long (animations, blinking carets)."""


class Desktop:
    """A display with the playground on it, an actuator and a capture; shared by envs, closed once."""

    def __init__(self, display: str | None = None, playground: bool = True):
        from perception.capture import ScreenCapture

        self.vd = None if display else VirtualDisplay().start()
        self.display = display or self.vd.name
        self.actuator = XTestActuator(self.display)
        self.capture = ScreenCapture(display=self.display)
        self.host = PlaygroundHost(self.child_env()) if playground else None
        self.tasks = [t["name"] for t in self.host.call("tasks")["tasks"]] if self.host else []

    def child_env(self) -> dict:
        """Environment for an app started on this desktop (DISPLAY, and XAUTHORITY for our own Xvfb)."""
        return self.vd.env() if self.vd is not None else dict(os.environ, DISPLAY=self.display)

    def __deepcopy__(self, memo) -> "Desktop":
        return self  # a shared resource (gymnasium deep-copies make() kwargs into the spec)

    def close(self) -> None:
        for part in (self.host, self.capture, self.actuator):
            if part is not None:
                part.close()
        self.host = None
        if self.vd is not None:
            self.vd.stop()
            self.vd = None

    def __enter__(self) -> "Desktop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScreenEnv(gym.Env, ABC):
    """Acting on one window of a desktop: the parts every task source shares.

    Subclasses start the task (`_start_task`) and say whether it is over (`_status`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, desktop: Desktop, own_desktop: bool, width: int, height: int, step_cost: float,
                 settle: SettleConfig, render_mode: str | None):
        self.desktop, self._own_desktop = desktop, own_desktop
        self.width, self.height, self.step_cost = width, height, step_cost
        self.settle_cfg, self.render_mode = settle, render_mode
        self.observation_space = observation_space(width, height)
        self.action_space = action_space(width, height)
        self.instruction, self.origin = "", (0, 0)
        self.max_steps, self.steps = 1, 0
        self.frame = np.zeros((height, width, 3), np.uint8)
        self.last_settle_ms = self.last_capture_ms = self.last_action_ms = self.last_sync_ms = 0.0

    @abstractmethod
    def _start_task(self, seed: int, options: dict | None) -> tuple[str, tuple[int, int], int]:
        """Start an episode: (instruction, window origin on the screen, step budget)."""

    @abstractmethod
    def _status(self, a: Action | None) -> dict:
        """After action `a` (None: just let the app catch up): {"done": bool, "success": bool | None}."""

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.instruction, self.origin, self.max_steps = self._start_task(int(seed), options)
        self.steps = 0
        x, y = self.origin
        # The pointer rests outside the window, so hover effects never depend on the last episode.
        self.desktop.actuator.move(x + self.width + 20, y + self.height + 20)
        self.desktop.actuator.sync()
        self._status(None)  # let the app catch up before the first frame
        self.frame = self._settle()
        return self._obs(), self._info(done=False, success=None)

    def step(self, action):
        a = action if isinstance(action, Action) else Action.from_gym(action)
        self.steps += 1
        t = time.perf_counter()
        typed = self._act(a)
        self.last_action_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        status = self._status(a)
        self.last_sync_ms = (time.perf_counter() - t) * 1e3
        self.frame = self._settle()
        terminated = bool(status["done"])
        reward = -self.step_cost + ((1.0 if status["success"] else -1.0 if status["success"] is False else 0.0)
                                    if terminated else 0.0)
        truncated = not terminated and self.steps >= self.max_steps
        success = status["success"]
        if truncated:  # the task was not done within its step budget: that is a failure too
            reward, success = reward - 1.0, False
        info = self._info(done=terminated, success=success)
        info.update({k: v for k, v in status.items() if k not in ("done", "success")})
        if typed is None and a.type == ActionType.TYPE:
            info["invalid_span"] = True
        return self._obs(), reward, terminated, truncated, info

    def skip_step(self, reason: str):
        """Count a step without acting (the gate refused the action)."""
        self.steps += 1
        truncated = self.steps >= self.max_steps
        info = self._info(done=False, success=False if truncated else None)
        info["refused"] = reason
        return self._obs(), -self.step_cost - (1.0 if truncated else 0.0), False, truncated, info

    def render(self):
        return self.frame.copy()

    def close(self):
        if self._own_desktop and getattr(self, "desktop", None) is not None:
            self.desktop.close()
            self.desktop = None

    def window_rect(self) -> tuple[int, int, int, int]:
        return (*self.origin, self.width, self.height)

    # -- parts -----------------------------------------------------------------------------------
    def _act(self, a: Action) -> str | None:
        act, (ox, oy) = self.desktop.actuator, self.origin
        if a.type in (ActionType.CLICK, ActionType.DOUBLE_CLICK, ActionType.RIGHT_CLICK):
            act.click(ox + a.x, oy + a.y, "right" if a.type == ActionType.RIGHT_CLICK else "left",
                      2 if a.type == ActionType.DOUBLE_CLICK else 1)
        elif a.type == ActionType.DRAG:
            act.drag(ox + a.x, oy + a.y, ox + a.x2, oy + a.y2)
        elif a.type in (ActionType.SCROLL_UP, ActionType.SCROLL_DOWN):
            act.scroll(ox + a.x, oy + a.y, up=a.type == ActionType.SCROLL_UP)
        elif a.type == ActionType.KEY:
            act.key(a.key)
        elif a.type == ActionType.TYPE:
            text = span_text(self.instruction, a.span)
            if text is not None:
                act.type_text(text)
            return text
        return None

    def _grab(self) -> np.ndarray:
        t = time.perf_counter()
        f = self.desktop.capture.grab(self.origin[0], self.origin[1], self.width, self.height)
        self.last_capture_ms = (time.perf_counter() - t) * 1e3
        return f

    def _settle(self) -> np.ndarray:
        """Wait until the frame is unchanged over `interval_ms` (capped), never a fixed sleep."""
        t0 = time.perf_counter()
        interval, cap = self.settle_cfg.interval_ms / 1e3, self.settle_cfg.cap_ms / 1e3
        prev = self._grab()
        while True:
            time.sleep(interval)
            cur = self._grab()
            if np.array_equal(cur, prev) or time.perf_counter() - t0 > cap:
                self.last_settle_ms = (time.perf_counter() - t0) * 1e3
                return cur
            prev = cur

    def _cursor(self) -> np.ndarray:
        x, y = self.desktop.actuator.pointer()
        x, y = x - self.origin[0], y - self.origin[1]
        inside = 0 <= x < self.width and 0 <= y < self.height
        return np.array([x, y] if inside else [-1, -1], dtype=np.int64)

    def _obs(self) -> dict:
        return {"screen": self.frame.copy(), "instruction": self.instruction, "cursor": self._cursor()}

    def _info(self, done: bool, success: bool | None) -> dict:
        return {"task": self.task, "success": success, "steps": self.steps, "max_steps": self.max_steps}

    def timings(self) -> dict:
        """Milliseconds spent in the last step's parts (kept out of `info`, which must be deterministic)."""
        return {"settle_ms": self.last_settle_ms, "capture_ms": self.last_capture_ms,
                "action_ms": self.last_action_ms, "sync_ms": self.last_sync_ms}


class DesktopEnv(ScreenEnv):
    """A playground task (playground/tasks.py) on a desktop."""

    def __init__(self, task: str = "click-button", size: str = "small", desktop: Desktop | None = None,
                 display: str | None = None, step_cost: float = 0.01, settle: SettleConfig | None = None,
                 render_mode: str | None = None):
        if size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}")
        super().__init__(desktop or Desktop(display), desktop is None, *SIZES[size], step_cost,
                         settle or SettleConfig(), render_mode)
        self.task, self.size = task, size
        if task not in self.desktop.tasks:
            self.close()
            raise ValueError(f"unknown playground task {task!r}; see `squirrel tasks`")

    def _start_task(self, seed, options):
        if options and "task" in options:
            if options["task"] not in self.desktop.tasks:
                raise ValueError(f"unknown playground task {options['task']!r}")
            self.task = options["task"]
        r = self.desktop.host.call("reset", task=self.task, seed=seed, size=self.size)
        return r["instruction"], tuple(r["window"][:2]), r["max_steps"]

    def _status(self, a: Action | None) -> dict:
        return self.desktop.host.call("judge" if a is not None and a.type == ActionType.DONE else "sync")

    def oracle_action(self) -> Action | None:
        """The scripted solver's next action, from the app's ground-truth geometry (diagnostics only)."""
        d = self.desktop.host.call("oracle")["action"]
        return None if d is None else Action.from_dict(d)

