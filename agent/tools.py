"""Tools as actions: the active tools of the library (memory/tools.py) offered to the policy as options.

A tool is a short routine mined from the agent's own successes, e.g. click[Submit-like] -> key Return, or
type[text] -> key Return. Its targets are pixel crops (24x48 around the point acted on, compared by their
centre: memory.tools.crop_similarity), so a tool is found on a new screen by appearance, whatever the encoder has learned since.

    slots: up to MAX_TOOLS active tools; each described to the policy by a fixed feature vector (TOOL_F):
           per step, its kind (one-hot), key (one-hot) and its target's appearance (4x12 grey), zero-padded
    mask:  a tool is offered on a screen only when its first step's target (if it starts with one) is found
           on it (appearance similarity >= threshold); pruned and candidate tools are never offered. A point
           tool (its first step acts where the policy points: "click the option, then Submit") is offered when
           its first target after that is on the screen
    call:  the policy picks "call a tool", a slot, the point (for a point tool: its patch and sub-cell heads,
           as for a click) and (for a tool that types) a span of the instruction; the
           steps then run one by one through the env (so through the gate), each target resolved on the screen
           it acts on; the call is one decision of the policy and ends early when a target is not found or the
           episode ends. Its statistics are updated: a call succeeds when every step ran
           (each target was found); whether calling it then was wise is the policy's to learn from the reward,
           so an episode lost to a wrong choice of span does not count against the tool. The library demotes
           a tool whose calls keep failing (e.g. a menu item that no longer appears after its menu opens).
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from agent.actions import KEYS, Action, ActionType
from agent.reading import CELL
from agent.recall import appearance_maps, crop
from memory.tools import CENTRE, CROP_N, CROP_SHAPE, KINDS, Tool, ToolLibrary

MAX_TOOLS = 8  # slots offered to the policy
MAX_STEPS = 8  # steps described per tool (the library mines at most 8)
CROP_H, CROP_W = CROP_SHAPE[:2]
STEP_F = len(KINDS) + len(KEYS) + 1 + (CROP_H // 4) * (CROP_W // 4)
TOOL_F = MAX_STEPS * STEP_F
_POINTER_KINDS = {"click": ActionType.CLICK, "double_click": ActionType.DOUBLE_CLICK,
                  "right_click": ActionType.RIGHT_CLICK, "scroll_up": ActionType.SCROLL_UP,
                  "scroll_down": ActionType.SCROLL_DOWN}


class ToolInputs(NamedTuple):
    """What the policy sees of the tools at one decision (kept with the step: an update must see the same)."""

    desc: torch.Tensor  # (T,TOOL_F) the slots' descriptors (shared by every step until the library changes)
    mask: torch.Tensor  # (T,) bool: offered on this screen
    param: torch.Tensor  # (T,) bool: the tool types a span the policy chooses
    point: torch.Tensor  # (T,) bool: the tool's first step acts where the policy points


class ToolCall(NamedTuple):
    tool_id: int
    steps: int  # primitive steps executed (env steps taken)
    ok: bool  # every step ran (the episode may have ended during it)
    reason: str  # why not, when not ok


def target_png(crop_u8: np.ndarray) -> bytes:
    """A small PNG of a target crop (the thumbnail people see in the panel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop_u8).save(buf, format="PNG")
    return buf.getvalue()


def target_crop(frame: np.ndarray, x: int, y: int) -> np.ndarray:
    """The stored appearance of a point acted on: (CROP_N,) float32 of the 24x48 colour crop around it."""
    return crop(frame, x, y, CROP_H, CROP_W).astype(np.float32).ravel()


def _centre(target: np.ndarray) -> np.ndarray:
    """The part of a target crop that is looked for on a screen: its centre 8x24 (the context around it may
    differ from screen to screen, as it may between the clicks mining grouped)."""
    return target.reshape(CROP_H, CROP_W, 3)[CENTRE].astype(np.uint8)


def points(tool: Tool) -> bool:
    """Does the tool's first step act where the caller points (a point tool)?"""
    return any(p.kind == "point" and p.step == 0 for p in tool.params)


def _anchor(tool: Tool):
    """The step whose target must be on the screen for the tool to be offered: its first step, or for a point
    tool the next pointer step (None: offered on any screen)."""
    j = 1 if points(tool) else 0
    s = tool.steps[j] if j < len(tool.steps) else None
    return s if s is not None and s.kind in _POINTER_KINDS else None


def usable(tool: Tool) -> bool:
    """Can the agent run this tool: crop targets (the first step of a point tool needs none), known keys, no
    drags, at most one span without a default."""
    free = 0
    for j, s in enumerate(tool.steps):
        if s.kind in _POINTER_KINDS:
            if j == 0 and points(tool):
                continue
            if s.target is None or s.target.size != CROP_N:
                return False
        elif s.kind == "key":
            if s.key not in KEYS:
                return False
        elif s.kind == "type":
            free += s.span is None
        elif s.kind != "done":
            return False
    return 0 < len(tool.steps) <= MAX_STEPS and free <= 1


def describe(tool: Tool) -> torch.Tensor:
    """(TOOL_F,) the tool as the policy sees it: per step kind, key and the target's coarse appearance."""
    out = torch.zeros(MAX_STEPS, STEP_F)
    for j, s in enumerate(tool.steps[:MAX_STEPS]):
        out[j, KINDS.index(s.kind)] = 1.0
        out[j, len(KINDS) + (KEYS.index(s.key) + 1 if s.key in KEYS else 0)] = 1.0
        if s.target is not None and s.target.size == CROP_N:
            grey = torch.from_numpy(s.target.reshape(CROP_H, CROP_W, 3).mean(-1) / 255.0)[None, None].float()
            out[j, len(KINDS) + len(KEYS) + 1:] = F.avg_pool2d(grey, 4).flatten() - 0.5
    return out.flatten()


class ToolSet:
    """The library's active, usable tools in slots, their availability on a screen, and running a call."""

    def __init__(self, library: ToolLibrary, threshold: float = 0.5):
        self.library, self.threshold = library, threshold
        self.tools: list[Tool] = []
        self.desc = torch.zeros(MAX_TOOLS, TOOL_F)
        self.param = torch.zeros(MAX_TOOLS, dtype=torch.bool)
        self.point = torch.zeros(MAX_TOOLS, dtype=torch.bool)
        self._anchors: list = []  # per slot, the step whose target must be on a screen to offer it (_anchor)
        self._stamp = None
        self.refresh()

    def _active_stamp(self):
        return self.library.db.read("SELECT group_concat(id) FROM tools WHERE status = 'active'")[0][0]

    def refresh(self) -> None:
        """Re-read the active tools (after mining, approval, pruning or demotion). Most successful first."""
        self._stamp = self._active_stamp()
        active = [t for t in self.library.candidates_for_policy() if usable(t)]
        active.sort(key=lambda t: (-(t.success_rate if t.success_rate is not None else 0.5), -t.support, t.id))
        self.tools = active[:MAX_TOOLS]
        desc = torch.zeros(MAX_TOOLS, TOOL_F)
        param = torch.zeros(MAX_TOOLS, dtype=torch.bool)
        point = torch.zeros(MAX_TOOLS, dtype=torch.bool)
        for i, t in enumerate(self.tools):
            desc[i] = describe(t)
            param[i] = any(s.kind == "type" and s.span is None for s in t.steps)
            point[i] = points(t)
        self.desc, self.param, self.point = desc, param, point  # new tensors: steps already taken keep the ones they saw
        self._anchors = [_anchor(t) for t in self.tools]

    def inputs(self, frame: np.ndarray) -> ToolInputs:
        """The tools offered on this screen. Reads which tools are active first, so a tool pruned (or demoted) a
        moment ago, here or in the panel, is not offered again."""
        if self._active_stamp() != self._stamp:
            self.refresh()
        mask = torch.zeros(MAX_TOOLS, dtype=torch.bool)
        starts = [(i, a.target) for i, a in enumerate(self._anchors) if a is not None]
        for i, a in enumerate(self._anchors):
            mask[i] = a is None
        if starts:
            crops = np.stack([_centre(c) for _, c in starts])
            best = appearance_maps(frame, crops).flatten(1).amax(1)
            for (i, _), b in zip(starts, best):
                mask[i] = bool(b >= self.threshold)
        return ToolInputs(self.desc, mask, self.param, self.point)

    def resolve(self, step, frame: np.ndarray) -> tuple[int, int] | None:
        """Where a target step acts on this screen: the centre of the best-matching 4-px cell, or None."""
        m = appearance_maps(frame, _centre(step.target)[None])[0]
        if float(m.max()) < self.threshold:
            return None
        cy, cx = divmod(int(m.argmax()), m.shape[1])
        return cx * CELL + CELL // 2, cy * CELL + CELL // 2

    def action(self, tool: Tool, j: int, frame: np.ndarray, span: tuple[int, int],
               point: tuple[int, int] | None = None) -> Action | None:
        """Step j of the tool as a primitive action on this screen (None: its target is not on it). `point`:
        where a point tool's first step acts."""
        s = tool.steps[j]
        if j == 0 and points(tool):
            if point is None:
                raise ValueError(f"tool {tool.id} acts where it is pointed: call it with a point")
            return Action(_POINTER_KINDS[s.kind], int(point[0]), int(point[1]))
        if s.kind in _POINTER_KINDS:
            p = self.resolve(s, frame)
            return None if p is None else Action(_POINTER_KINDS[s.kind], p[0], p[1])
        if s.kind == "key":
            return Action(ActionType.KEY, key=s.key)
        if s.kind == "type":
            return Action(ActionType.TYPE, span=s.span if s.span is not None else span)
        return Action(ActionType.DONE)

    def call(self, slot: int, env, obs: dict, span: tuple[int, int], on_step,
             point: tuple[int, int] | None = None) -> tuple[dict, ToolCall]:
        """Run the tool in `slot` from `obs`: each step through `env.step`, then `on_step(obs, action, result)`
        with the env's (next_obs, reward, terminated, truncated, info). `point`: where a point tool's first step
        acts. Returns the last observation and the call's record; the statistics are updated in the library."""
        if not 0 <= slot < len(self.tools):
            raise ValueError(f"no tool in slot {slot} (the policy may only call offered tools)")
        tool = self.tools[slot]
        n, ok, reason = 0, True, ""
        for j in range(len(tool.steps)):
            action = self.action(tool, j, obs["screen"], span, point)
            if action is None:
                ok, reason = False, f"step {j + 1}'s target is not on the screen"
                break
            result = env.step(action)
            n += 1
            on_step(obs, action, result)
            obs, _, terminated, truncated, info = result
            if terminated or truncated:
                ok = j == len(tool.steps) - 1 or bool(info.get("success"))
                reason = "" if ok else f"the episode ended after step {j + 1}"
                break
        self.library.record_call(tool.id, ok)
        return obs, ToolCall(tool.id, n, ok, reason)
