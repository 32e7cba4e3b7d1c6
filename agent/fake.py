"""A fake desktop for fast tests (STYLE.md 4): synthetic frames, no display, the real spaces.

Tasks: "click" — coloured boxes, "Click the <colour> box." (a click on any box ends the episode);
"type" — "Type <word> and press Enter." (TYPE the right span, then KEY Return).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agent.actions import Action, ActionType, action_space, find_span, observation_space, span_text

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 30), "blue": (30, 60, 220), "yellow": (230, 200, 0)}
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon")


class FakeDesktopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, task: str = "click", width: int = 160, height: int = 210, n_boxes: int = 3,
                 box: int = 24, step_cost: float = 0.01, max_steps: int = 3, render_mode: str | None = None):
        assert task in ("click", "type")
        self.task, self.width, self.height, self.n_boxes, self.box = task, width, height, n_boxes, box
        self.step_cost, self.max_steps, self.render_mode = step_cost, max_steps, render_mode
        self.observation_space = observation_space(width, height)
        self.action_space = action_space(width, height)
        self.steps, self.typed = 0, ""

    def window_rect(self):
        return (0, 0, self.width, self.height)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        rng, self.steps, self.typed = self.np_random, 0, ""
        self.frame = np.full((self.height, self.width, 3), 255, np.uint8)
        if self.task == "click":
            names = list(rng.choice(list(COLOURS), size=self.n_boxes, replace=False))
            self.boxes = []
            for name in names:
                while True:
                    x, y = int(rng.integers(0, self.width - self.box)), int(rng.integers(0, self.height - self.box))
                    if all(abs(x - bx) > self.box or abs(y - by) > self.box for _, bx, by in self.boxes):
                        break
                self.boxes.append((name, x, y))
                self.frame[y:y + self.box, x:x + self.box] = COLOURS[name]
            self.target = names[0]
            self.instruction = f"Click the {self.target} box."
        else:
            self.word = str(rng.choice(WORDS))
            self.instruction = f'Type "{self.word}" and press Enter.'
        return self._obs(), {"task": f"fake-{self.task}", "success": None}

    def oracle_action(self) -> Action:
        if self.task == "click":
            _, x, y = self.boxes[0]
            return Action(ActionType.CLICK, x + self.box // 2, y + self.box // 2)
        if self.typed != self.word:
            return Action(ActionType.TYPE, span=find_span(self.instruction, self.word))
        return Action(ActionType.KEY, key="Return")

    def step(self, action):
        a = action if isinstance(action, Action) else Action.from_gym(action)
        self.steps += 1
        done, success = False, None
        if self.task == "click" and a.type == ActionType.CLICK:
            for name, x, y in self.boxes:
                if x <= a.x < x + self.box and y <= a.y < y + self.box:
                    done, success = True, name == self.target
        elif self.task == "type":
            if a.type == ActionType.TYPE:
                self.typed += span_text(self.instruction, a.span) or ""
            elif a.type == ActionType.KEY and a.key == "Return":
                done, success = True, self.typed == self.word
        if a.type == ActionType.DONE:
            done, success = True, False
        truncated = not done and self.steps >= self.max_steps
        if truncated:  # out of steps: a failure, as on the real desktop
            success = False
        reward = -self.step_cost + ((1.0 if success else -1.0) if done or truncated else 0.0)
        return self._obs(), reward, done, truncated, {"task": f"fake-{self.task}", "success": success, "steps": self.steps,
                                                      "max_steps": self.max_steps}

    def skip_step(self, reason: str):
        self.steps += 1
        out = self.steps >= self.max_steps
        return (self._obs(), -self.step_cost - (1.0 if out else 0.0), False, out,
                {"refused": reason, "success": False if out else None})

    def render(self):
        return self.frame.copy()

    def _obs(self):
        return {"screen": self.frame.copy(), "instruction": self.instruction, "cursor": np.array([-1, -1], np.int64)}


class FakeTasksEnv(gym.Env):
    """fake-click and fake-type on one display-free desktop; reset(options={"task": ...}) picks one."""

    def __init__(self):
        self.envs = {"fake-click": FakeDesktopEnv("click", n_boxes=1, box=48), "fake-type": FakeDesktopEnv("type")}
        self.current = self.envs["fake-click"]
        self.observation_space, self.action_space = self.current.observation_space, self.current.action_space

    def window_rect(self):
        return self.current.window_rect()

    def reset(self, *, seed=None, options=None):
        task = (options or {}).get("task", "fake-click")
        if task not in self.envs:
            raise ValueError(f"the fake desktop runs {', '.join(self.envs)}, not {task!r}")
        self.current = self.envs[task]
        return self.current.reset(seed=seed, options=options)

    def step(self, action):
        return self.current.step(action)

    def skip_step(self, reason: str):
        return self.current.skip_step(reason)

    def render(self):
        return self.current.render()
