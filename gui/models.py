"""Plain, Qt-free state the panel's views observe (napari style: a model emits, a view subscribes).

The controller feeds these from the agent process's events, on the UI thread; views never talk to the
agent process themselves.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np


class Emitter:
    """A tiny event: views `connect` a callable, the model `emit`s."""

    def __init__(self):
        self._subs: list[Callable] = []

    def connect(self, fn: Callable) -> Callable:
        self._subs.append(fn)
        return fn

    def disconnect(self, fn: Callable) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    def emit(self, *args) -> None:
        for fn in list(self._subs):
            fn(*args)


ALIVE = ("starting", "running", "paused", "stopping")
STATUSES = ("idle",) + ALIVE + ("stopped", "finished", "crashed")


class AgentState:
    """What the agent process is doing, its counters and speeds, and the messages to show."""

    def __init__(self):
        self.status, self.detail = "idle", ""
        self.env_steps = self.episodes = self.updates = 0
        self.steps_per_s = self.updates_per_s = 0.0
        self.resumed_from: int | None = None
        self.pid: int | None = None
        self.display = ""
        self.actors = 0  # Ray actors acting for the running agent (0: the single-process loop)
        self.assigned: list[str] = []
        self.messages: list[tuple[float, str, str]] = []  # (time, level, text)
        self.changed = Emitter()  # ()
        self.message = Emitter()  # (level, text)
        self._samples: deque = deque(maxlen=512)  # (t, env_steps, updates)

    @property
    def alive(self) -> bool:
        return self.status in ALIVE

    def set_status(self, status: str, detail: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.status, self.detail = status, detail
        if status not in ("running", "paused"):
            self.steps_per_s = self.updates_per_s = 0.0
            self._samples.clear()
        self.changed.emit()

    def set_counters(self, env_steps: int, episodes: int, updates: int, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        self.env_steps, self.episodes, self.updates = env_steps, episodes, updates
        self._samples.append((t, env_steps, updates))
        while len(self._samples) > 2 and t - self._samples[0][0] > 30.0:
            self._samples.popleft()
        # steps/s over the last ~3 s; updates are rarer (one per rollout), so updates/s over the last ~30 s
        t0, s0, _ = next(x for x in self._samples if t - x[0] <= 3.0 or x is self._samples[-1])
        if t - t0 > 0.2:
            self.steps_per_s = (env_steps - s0) / (t - t0)
        t0, _, u0 = self._samples[0]
        if t - t0 > 0.2:
            self.updates_per_s = (updates - u0) / (t - t0)
        self.changed.emit()

    def add_message(self, level: str, text: str) -> None:
        self.messages.append((time.time(), level, text))
        del self.messages[:-500]
        self.message.emit(level, text)


class CurveModel:
    """Per-task moving success rate and mean return over env steps, and the world model's error."""

    def __init__(self, window: int = 50, max_points: int = 4000):
        self.window, self.max_points = window, max_points
        self.success: dict[str, list[tuple[float, float]]] = {}
        self.ret: dict[str, list[tuple[float, float]]] = {}
        self.wm: list[tuple[float, float]] = []
        self.episodes: dict[str, int] = {}
        self._recent: dict[str, deque] = {}
        self.changed = Emitter()

    def clear(self) -> None:
        self.success, self.ret, self.wm, self.episodes, self._recent = {}, {}, [], {}, {}
        self.changed.emit()

    def _thin(self, pts: list) -> None:
        if len(pts) > self.max_points:
            del pts[1:-1:2]  # halve, keeping the ends

    def add_episode(self, task: str, x: float, success: bool | None, ret: float) -> None:
        r = self._recent.setdefault(task, deque(maxlen=self.window))
        r.append((1.0 if success else 0.0, float(ret)))
        self.episodes[task] = self.episodes.get(task, 0) + 1
        for series, v in ((self.success, float(np.mean([s for s, _ in r]))), (self.ret, float(np.mean([g for _, g in r])))):
            pts = series.setdefault(task, [])
            pts.append((float(x), v))
            self._thin(pts)

    def add_episodes(self, episodes: list[dict]) -> None:
        for e in episodes:
            self.add_episode(e["task"], e["env_steps"], e["success"], e["ret"])
        if episodes:
            self.changed.emit()

    def add_losses(self, losses: dict) -> None:
        if "wm" in losses:
            self.wm.append((float(losses.get("env_steps", len(self.wm))), float(losses["wm"])))
            self._thin(self.wm)
            self.changed.emit()

    def load_history(self, rows: list[tuple[str, str, float | None, int | None]]) -> None:
        """Rebuild from the database's finished episodes (task, outcome, return, steps), oldest first;
        x is the running sum of their steps, which is the agent's env-step count."""
        self.success, self.ret, self.episodes, self._recent = {}, {}, {}, {}
        x = 0
        for task, outcome, ret, steps in rows:
            x += steps or 0
            if outcome in ("success", "failure"):
                self.add_episode(task, x, outcome == "success", ret or 0.0)
        self.changed.emit()

    def rate(self, task: str) -> float | None:
        r = self._recent.get(task)
        return float(np.mean([s for s, _ in r])) if r else None


class LiveModel:
    """The agent's screen, its intended action and click heat map; the takeover and verdict state."""

    def __init__(self):
        self.frame: np.ndarray | None = None  # (H,W,3) uint8, the task window
        self.action: dict | None = None  # {"type": "click", "x":.., "y":..} in task-window pixels
        self.heat: np.ndarray | None = None  # (gh,gw) click probabilities over the encoder's patches
        self.task = self.instruction = ""
        self.demo = False  # the frame is from a demonstration (a person acting)
        self.show_heat, self.show_action = True, True
        self.takeover = "off"  # off | requested (after the agent's current episode) | ready (a person acts)
        self.typed = ""  # text a person typed in takeover, not yet sent
        self.awaiting: list[dict] = []  # episodes whose outcome a person must give (ask-the-person tasks)
        self.last_episode: dict | None = None
        self._times: deque = deque(maxlen=64)
        self.frame_changed = Emitter()  # ()
        self.changed = Emitter()  # ()

    @property
    def fps(self) -> float:
        t = self._times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else 0.0

    def set_frame(self, frame: np.ndarray, action: dict | None, heat: np.ndarray | None, task: str = "",
                  instruction: str = "", demo: bool = False) -> None:
        self.frame, self.action, self.heat = frame, action, heat
        self.task, self.instruction, self.demo = task, instruction, demo
        self._times.append(time.monotonic())
        self.frame_changed.emit()

    def set_overlays(self, heat: bool | None = None, action: bool | None = None) -> None:
        if heat is not None:
            self.show_heat = heat
        if action is not None:
            self.show_action = action
        self.frame_changed.emit()

    def set_takeover(self, state: str) -> None:
        self.takeover = state
        if state == "off":
            self.typed = ""
        self.changed.emit()

    def add_episodes(self, episodes: list[dict]) -> None:
        if not episodes:
            return
        self.last_episode = episodes[-1]
        self.awaiting.extend(e for e in episodes if e.get("ask"))
        del self.awaiting[:-50]
        self.changed.emit()

    def verdict_given(self, episode_id: int) -> None:
        self.awaiting = [e for e in self.awaiting if e["id"] != episode_id]
        self.changed.emit()


class ActorsModel:
    """The Ray actors of an agent started with `--actors N` and the learner's figures, as the agent process
    reports them (`DistributedLearner.status()`: one dict per actor, updates/s, policy lag, broadcast size)."""

    def __init__(self):
        self.count = 0  # actors the running (or last) agent was started with; 0: the single-process loop
        self.address = ""  # the Ray cluster it joined ("": a local Ray)
        self.actors: list[dict] = []
        self.version = -1
        self.updates_per_s = 0.0
        self.update_s: float | None = None
        self.policy_lag: dict | None = None  # median, mean, max, steps
        self.broadcast_mb = 0.0
        self.updated = 0.0  # time.time() of the last report
        self.changed = Emitter()  # ()

    def start(self, count: int, address: str = "") -> None:
        """A new agent run: `count` actors (0: none), nothing reported yet."""
        self.count, self.address, self.actors = int(count), address, []
        self.version, self.updates_per_s, self.update_s, self.policy_lag, self.broadcast_mb = -1, 0.0, None, None, 0.0
        self.updated = 0.0
        self.changed.emit()

    def set_scale(self, scale: dict) -> None:
        self.actors = [dict(a) for a in scale.get("actors", [])]
        self.version = int(scale.get("version", -1))
        self.updates_per_s = float(scale.get("updates_per_s") or 0.0)
        self.update_s = scale.get("update_s_mean")
        self.policy_lag = scale.get("policy_lag")
        self.broadcast_mb = float(scale.get("broadcast_mb") or 0.0)
        self.updated = time.time()
        self.changed.emit()

    def state_of(self, a: dict) -> str:
        if not a.get("alive", True):
            return f"given up: {a.get('dead', '')}".strip()
        if a.get("restarting"):
            return "restarting"
        return "acting" if a.get("episodes") else "starting"
