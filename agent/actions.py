"""The action space of DESIGN.md decision 2, shared by the env, the gate, the oracle and the policy.

A point is in task-area pixels (x right, y down, origin at the task window's top-left). Typed text is
always a span of the instruction's words, so the policy points at what to type instead of spelling it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from gymnasium import spaces


class ActionType(IntEnum):
    CLICK = 0
    DOUBLE_CLICK = 1
    RIGHT_CLICK = 2
    DRAG = 3  # from point to point2
    SCROLL_UP = 4
    SCROLL_DOWN = 5
    KEY = 6  # a key or chord from KEYS
    TYPE = 7  # the instruction words span[0]..span[1] inclusive
    DONE = 8


POINTER_TYPES = {ActionType.CLICK, ActionType.DOUBLE_CLICK, ActionType.RIGHT_CLICK, ActionType.DRAG,
                 ActionType.SCROLL_UP, ActionType.SCROLL_DOWN}

# The fixed key set. Chords are '+'-joined X keysym names (modifiers first).
KEYS: tuple[str, ...] = (
    "Return", "Tab", "Escape", "BackSpace", "Delete", "space", "Up", "Down", "Left", "Right",
    "Home", "End", "Page_Up", "Page_Down", "ctrl+a", "ctrl+c", "ctrl+v", "ctrl+x", "ctrl+z", "shift+Tab",
)
MAX_WORDS = 64  # instruction words addressable by a TYPE span
INSTRUCTION_CHARSET = string.printable.strip() + " "
WORD_RE = re.compile(r"[A-Za-z0-9@_]+(?:['.\-][A-Za-z0-9@_]+)*")


def words(instruction: str) -> list[tuple[int, int]]:
    """Character spans of the instruction's words: what a TYPE span indexes."""
    return [m.span() for m in WORD_RE.finditer(instruction)][:MAX_WORDS]


def span_text(instruction: str, span: tuple[int, int]) -> str | None:
    """The text a TYPE action with word span (i, j) types, or None when the span is invalid."""
    ws = words(instruction)
    i, j = int(span[0]), int(span[1])
    if not (0 <= i <= j < len(ws)):
        return None
    return instruction[ws[i][0]: ws[j][1]]


def find_span(instruction: str, text: str) -> tuple[int, int]:
    """The word span whose text is `text` (used by oracles and tests)."""
    ws = words(instruction)
    for i in range(len(ws)):
        for j in range(i, len(ws)):
            if instruction[ws[i][0]: ws[j][1]] == text:
                return (i, j)
    raise ValueError(f"{text!r} is not a span of {instruction!r}")


@dataclass(frozen=True)
class Action:
    """One primitive action; `to_gym()` gives the Dict-space sample the env takes."""

    type: ActionType
    x: int = 0
    y: int = 0
    x2: int = 0
    y2: int = 0
    key: str = ""
    span: tuple[int, int] = (0, 0)

    def to_gym(self) -> dict:
        return {
            "type": int(self.type),
            "point": np.array([self.x, self.y], dtype=np.int64),
            "point2": np.array([self.x2, self.y2], dtype=np.int64),
            "key": KEYS.index(self.key) if self.key else 0,
            "span": np.array(self.span, dtype=np.int64),
        }

    @staticmethod
    def from_gym(a: dict) -> "Action":
        t = ActionType(int(a["type"]))
        p, p2, s = np.asarray(a["point"]), np.asarray(a["point2"]), np.asarray(a["span"])
        return Action(t, int(p[0]), int(p[1]), int(p2[0]), int(p2[1]), KEYS[int(a["key"])] if t == ActionType.KEY else "",
                      (int(s[0]), int(s[1])))

    @staticmethod
    def from_dict(d: dict) -> "Action":
        """From the JSON form oracles and tools use: {"type": "click", "x":..., "y":...}."""
        t = ActionType[d["type"].upper()]
        return Action(t, int(d.get("x", 0)), int(d.get("y", 0)), int(d.get("x2", 0)), int(d.get("y2", 0)),
                      d.get("key", ""), tuple(d.get("span", (0, 0))))

    def to_dict(self) -> dict:
        d: dict = {"type": self.type.name.lower()}
        if self.type in POINTER_TYPES:
            d.update(x=self.x, y=self.y)
        if self.type == ActionType.DRAG:
            d.update(x2=self.x2, y2=self.y2)
        if self.type == ActionType.KEY:
            d["key"] = self.key
        if self.type == ActionType.TYPE:
            d["span"] = list(self.span)
        return d


def action_space(width: int, height: int) -> spaces.Dict:
    hi = np.array([width - 1, height - 1], dtype=np.int64)
    return spaces.Dict({
        "type": spaces.Discrete(len(ActionType)),
        "point": spaces.Box(low=0, high=hi, shape=(2,), dtype=np.int64),
        "point2": spaces.Box(low=0, high=hi, shape=(2,), dtype=np.int64),
        "key": spaces.Discrete(len(KEYS)),
        "span": spaces.Box(low=0, high=MAX_WORDS - 1, shape=(2,), dtype=np.int64),
    })


def observation_space(width: int, height: int) -> spaces.Dict:
    return spaces.Dict({
        "screen": spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8),
        "instruction": spaces.Text(max_length=512, min_length=0, charset=INSTRUCTION_CHARSET),
        "cursor": spaces.Box(low=-1, high=max(width, height), shape=(2,), dtype=np.int64),
    })
