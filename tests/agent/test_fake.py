from gymnasium.utils.env_checker import check_env

from agent.actions import Action, ActionType
from agent.fake import FakeDesktopEnv


def test_fake_env_passes_check_env():
    check_env(FakeDesktopEnv(), skip_render_check=False)
    check_env(FakeDesktopEnv("type"))


def test_fake_oracle_solves_and_wrong_click_fails():
    for task in ("click", "type"):
        env = FakeDesktopEnv(task)
        for seed in range(20):
            env.reset(seed=seed)
            done = False
            while not done:
                _, r, term, trunc, info = env.step(env.oracle_action())
                done = term or trunc
            assert info["success"] is True and r > 0
    env = FakeDesktopEnv()
    env.reset(seed=1)
    name, x, y = env.boxes[1]
    _, r, term, _, info = env.step(Action(ActionType.CLICK, x + 2, y + 2))
    assert term and info["success"] is False and r < 0
