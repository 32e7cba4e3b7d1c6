"""Every task id registered for `gymnasium.make` (DESIGN.md decision 1).

`gymnasium.make("squirrel/click-button-v0")` gives the gated env on a private virtual display;
pass `desktop=` to share one desktop between envs, or `display=":N"` to use a display you own.
"""

from __future__ import annotations

import gymnasium as gym

# The playground app's task names (its own process reports the same list; a test checks they agree).
PLAYGROUND_TASKS = (
    "click-button", "click-shape", "click-checkboxes", "enter-text", "focus-text", "choose-radio", "choose-combo",
    "click-tab", "choose-menu", "confirm-dialog", "double-click-item", "right-click-item", "set-slider",
    "scroll-list", "fill-form", "copy-paste",
)


def make_env(task: str, gate=None, stop=None, **kwargs) -> gym.Env:
    """A playground task env behind the safety gate."""
    from agent.env import DesktopEnv
    from agent.gate import SafetyGate

    return SafetyGate(DesktopEnv(task, **kwargs), gate, stop)


def register_all() -> None:
    for name in PLAYGROUND_TASKS:
        env_id = f"squirrel/{name}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="agent.registration:make_env", kwargs={"task": name})
    from agent.tasks.miniwob import register_miniwob_tasks
    from agent.tasks.user import register_user_tasks

    register_miniwob_tasks()
    register_user_tasks()
