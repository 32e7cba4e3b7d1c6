"""The desktop env on a real Xvfb display: real Qt windows, real XTest input, real mss frames."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agent.actions import Action, ActionType
from agent.registration import PLAYGROUND_TASKS

pytestmark = pytest.mark.xvfb


@pytest.fixture(scope="module")
def desktop():
    from agent.env import Desktop

    d = Desktop()  # its own private Xvfb and playground app
    yield d
    d.close()


def test_host_tasks_match_registry(desktop):
    assert tuple(desktop.tasks) == PLAYGROUND_TASKS and len(PLAYGROUND_TASKS) >= 16
    for name in PLAYGROUND_TASKS:
        assert f"squirrel/{name}-v0" in gym.registry


@pytest.mark.parametrize("task", PLAYGROUND_TASKS)
def test_oracle_solves_every_task(desktop, task):
    env = gym.make(f"squirrel/{task}-v0", desktop=desktop)
    for seed in range(5):
        env.reset(seed=seed)
        done, info = False, {}
        while not done:
            a = env.unwrapped.oracle_action()
            assert a is not None
            _, reward, term, trunc, info = env.step(a)
            assert "refused" not in info, info
            done = term or trunc
        assert term and info["success"] is True and reward > 0, (task, seed, env.unwrapped.instruction)


def test_random_agent_is_far_below_oracle(desktop):
    env = gym.make("squirrel/click-button-v0", desktop=desktop)
    wins = 0
    for seed, task in enumerate(PLAYGROUND_TASKS * 3):
        env.reset(seed=seed, options={"task": task})
        env.action_space.seed(seed)
        while True:
            _, _, term, trunc, info = env.step(env.action_space.sample())
            if term or trunc:
                break
        wins += info["success"] is True
    assert wins / (3 * len(PLAYGROUND_TASKS)) < 0.25


def test_same_seed_same_frame(desktop):
    env = gym.make("squirrel/click-shape-v0", desktop=desktop)
    a, _ = env.reset(seed=7)
    env.step(Action(ActionType.CLICK, 80, 120))
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    assert np.array_equal(a["screen"], b["screen"]) and a["instruction"] == b["instruction"]
    assert not np.array_equal(a["screen"], c["screen"])
    assert a["screen"].std() > 10  # real pixels, not a blank frame


def test_check_env_passes(desktop):
    from agent.env import DesktopEnv

    check_env(DesktopEnv("click-checkboxes", desktop=desktop))


def test_gate_refuses_outside_window_on_real_desktop(desktop):
    env = gym.make("squirrel/click-button-v0", desktop=desktop)
    obs, _ = env.reset(seed=3)
    before = desktop.actuator.pointer()
    obs2, _, term, _, info = env.step(Action(ActionType.CLICK, 170, 5))
    assert "outside" in info["refused"] and not term
    assert desktop.actuator.pointer() == before and np.array_equal(obs["screen"], obs2["screen"])


def test_observation_is_what_is_on_screen(desktop):
    env = gym.make("squirrel/confirm-dialog-v0", desktop=desktop)
    obs, _ = env.reset(seed=1)
    x, y, w, h = env.unwrapped.window_rect()
    import mss

    with mss.MSS(display=desktop.display) as s:
        shot = np.asarray(s.grab({"left": x, "top": y, "width": w, "height": h}))[:, :, 2::-1]
    assert np.array_equal(obs["screen"], shot)
