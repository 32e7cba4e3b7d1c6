"""MiniWoB++ in Chromium on a private Xvfb: the agent sees the screen and acts through XTest.

Target positions are read from the page here, in the tests only; the agent never sees the DOM.
"""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agent.actions import Action, ActionType, action_space, find_span, observation_space
from agent.tasks.miniwob import MINIWOB_TASKS, NONDETERMINISTIC, MiniWobEnv, _group_alive, task_name
from squirrel.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.xvfb,
              pytest.mark.skipif(bool(os.environ.get("SQUIRREL_NO_CHROMIUM")),
                                 reason="SQUIRREL_NO_CHROMIUM: set up without Chromium")]


def center(env, selector: str) -> tuple[int, int]:
    """The centre of an element, in task-area pixels (test only)."""
    x, y = env.unwrapped.browser.evaluate(
        f"(() => {{ const b = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
        " return [b.left + b.width / 2, b.top + b.height / 2]; })()")
    return int(x), int(y)


def ours(env) -> int:
    return env.unwrapped.browser.pid


@pytest.fixture(scope="module")
def desktop():
    from agent.env import Desktop

    d = Desktop(playground=False)
    yield d
    d.close()


@pytest.fixture(scope="module")
def env(desktop):
    e = gym.make("squirrel/miniwob-click-test-v0", desktop=desktop)
    yield e
    e.close()


def test_task_list_is_the_packages_and_every_id_is_registered():
    import miniwob  # noqa: F401 - registers the package's own ids

    theirs = {k[len("miniwob/"):-len("-v1")] for k in gym.registry if k.startswith("miniwob/")}
    assert set(MINIWOB_TASKS) == {t for t in theirs if not t.startswith("flight.")} and len(MINIWOB_TASKS) == 125
    assert NONDETERMINISTIC == {t for t in MINIWOB_TASKS if gym.spec(f"miniwob/{t}-v1").nondeterministic}
    for name in MINIWOB_TASKS:
        assert f"squirrel/miniwob-{name}-v0" in gym.registry
    assert task_name("miniwob-click-test") == task_name("click-test") == "click-test"
    with pytest.raises(UserError, match="unknown MiniWoB"):
        task_name("miniwob-click-nothing")


def test_same_spaces_as_the_playground_and_check_env_passes(desktop, env):
    from gymnasium.utils.env_checker import check_env

    assert env.observation_space == observation_space(160, 210)
    assert env.action_space == action_space(160, 210)
    e = MiniWobEnv("click-button", desktop=desktop)
    try:
        check_env(e)
    finally:
        e.close()


def button(env, word: str, same: bool) -> str:
    """A selector for a click-button button whose label is (or is not) `word` (test only)."""
    return env.unwrapped.browser.evaluate(
        "(([w, same]) => { const bs = [...document.querySelectorAll('#area button')];"
        " bs.forEach((b, i) => b.dataset.i = i);"
        " const i = bs.findIndex(b => (b.textContent.trim() === w) === same);"
        " return i < 0 ? null : '#area button[data-i=\\'' + i + '\\']'; })"
        f"({json.dumps([word, same])})")


@pytest.mark.parametrize("task", ["click-test", "click-button"])
def test_scripted_click_on_the_target_earns_reward(env, task):
    for seed in range(3):
        obs, _ = env.reset(seed=seed, options={"task": f"miniwob-{task}"})
        assert obs["screen"].shape == (210, 160, 3) and obs["instruction"]
        # click-button says: Click on the "WORD" button.
        sel = "#subbtn" if task == "click-test" else button(env, obs["instruction"].split('"')[1], True)
        _, reward, term, trunc, info = env.step(Action(ActionType.CLICK, *center(env, sel)))
        assert term and not trunc and info["success"] is True and reward > 0.9, (task, seed, obs["instruction"], info)
        assert info["miniwob_raw_reward"] == 1 and 0 < info["miniwob_reward"] <= 1


def test_a_wrong_click_is_a_failure(env):
    for seed in range(20):
        obs, _ = env.reset(seed=seed, options={"task": "miniwob-click-button"})
        sel = button(env, obs["instruction"].split('"')[1], False)
        if sel is not None:
            break
    _, reward, term, trunc, info = env.step(Action(ActionType.CLICK, *center(env, sel)))
    assert term and info["success"] is False and reward < -0.9 and info["miniwob_raw_reward"] == -1


def test_the_tasks_own_clock_ends_the_episode_as_a_failure(desktop):
    env = MiniWobEnv("click-test", desktop=desktop, episode_s=0.3)
    try:
        env.reset(seed=0)
        time.sleep(0.5)
        _, reward, term, _, info = env.step(Action(ActionType.CLICK, 2, 2))
        assert term and info["success"] is False and info["miniwob_reason"] == "timed out" and reward < -0.9
        assert env.stats()["clock_timeouts"] == 1
    finally:
        env.close()


def test_typing_reaches_the_page(env):
    obs, _ = env.reset(seed=5, options={"task": "miniwob-enter-text"})
    text = env.unwrapped.browser.evaluate("document.querySelector('#query .bold').textContent")
    steps = [Action(ActionType.CLICK, *center(env, "#tt")),
             Action(ActionType.TYPE, span=find_span(obs["instruction"], text)),
             Action(ActionType.CLICK, *center(env, "#subbtn"))]
    for a in steps:
        _, reward, term, trunc, info = env.step(a)
    assert term and info["success"] is True and reward > 0, (obs["instruction"], info)
    assert env.unwrapped.input_timeouts == 0


def test_observation_is_what_is_on_the_screen_and_what_the_page_draws(env):
    from PIL import Image

    obs, _ = env.reset(seed=11, options={"task": "miniwob-click-button"})
    u = env.unwrapped
    x, y = u.origin
    assert np.array_equal(obs["screen"], u.desktop.capture.grab(x, y, 160, 210))
    shot = u.browser.call("Page.captureScreenshot",
                          {"format": "png", "clip": {"x": 0, "y": 0, "width": 160, "height": 210, "scale": 1}})
    page = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))
    assert page.shape == (210, 160, 3)
    assert np.abs(page.astype(int) - obs["screen"].astype(int)).max() <= 2  # the task area, nothing else
    assert obs["screen"][:40, :, :].mean() > 150  # the yellow instruction bar is at the top, not the page's grey


def test_same_seed_same_task_and_fast_resets(env):
    a, _ = env.reset(seed=7, options={"task": "miniwob-click-button"})
    b, _ = env.reset(seed=8)
    c, _ = env.reset(seed=7)
    assert a["instruction"] == c["instruction"] and np.array_equal(a["screen"], c["screen"])
    assert not np.array_equal(a["screen"], b["screen"])
    t = time.perf_counter()
    for s in range(10):
        env.reset(seed=s)
    assert (time.perf_counter() - t) / 10 < 0.3  # measured ~50 ms here
    assert env.unwrapped.browser is not None and env.unwrapped.restarts == 0


def test_a_page_that_went_elsewhere_voids_the_episode_and_comes_back(env):
    env.reset(seed=0, options={"task": "miniwob-click-test"})
    env.unwrapped.browser.evaluate("location.hash = 'tabs-1'")  # what a click on <a href="#..."> does: harmless
    _, _, term, _, info = env.step(Action(ActionType.CLICK, 2, 2))
    assert not term and "page_lost" not in info
    env.unwrapped.browser.evaluate("location.href = 'about:blank'")  # e.g. a link dropped on the page
    time.sleep(0.2)
    _, reward, term, _, info = env.step(Action(ActionType.CLICK, 2, 2))
    assert term and info["success"] is None and info["page_lost"]
    env.reset(seed=1)
    assert env.step(Action(ActionType.CLICK, *center(env, "#subbtn")))[4]["success"] is True


def test_the_browser_is_restarted_when_it_dies(desktop):
    env = gym.make("squirrel/miniwob-click-test-v0", desktop=desktop)
    try:
        env.reset(seed=0)
        first = ours(env)
        os.killpg(first, signal.SIGKILL)  # between episodes
        obs, _ = env.reset(seed=1)
        assert ours(env) != first and env.unwrapped.restarts == 1 and obs["instruction"]
        second = ours(env)
        os.killpg(second, signal.SIGKILL)  # mid-episode: the episode ends, void, not a failure of the agent
        _, reward, term, _, info = env.step(Action(ActionType.CLICK, 80, 100))
        assert term and info["success"] is None and "browser_died" in info
        x, y = center(env, "#subbtn") if env.reset(seed=2) else (0, 0)
        assert env.step(Action(ActionType.CLICK, x, y))[4]["success"] is True
    finally:
        env.close()
    assert not _group_alive(first) and not _group_alive(second)


def test_the_browser_is_closed_after_close_and_after_an_exception(desktop):
    env = gym.make("squirrel/miniwob-click-test-v0", desktop=desktop)
    env.reset(seed=0)
    pid, tmp = ours(env), env.unwrapped.browser.tmp
    assert _group_alive(pid)
    env.close()
    assert not _group_alive(pid) and not os.path.exists(tmp)

    with pytest.raises(ZeroDivisionError):
        with gym.make("squirrel/miniwob-click-test-v0", desktop=desktop) as env:
            env.reset(seed=0)
            pid = ours(env)
            1 / 0
    assert not _group_alive(pid)


CHILD = """
import sys, time
import gymnasium as gym
import agent
env = gym.make("squirrel/miniwob-click-test-v0", display=sys.argv[1])
env.reset(seed=0)
print("BROWSER", env.unwrapped.browser.pid, flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("boom")  # never closes the env
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_no_browser_outlives_its_process(xdisplay, how):
    """An uncaught exception (no close) or SIGKILL of the agent's process: the browser still goes."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, xdisplay.name, how], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=xdisplay.env())
    line = ""
    while not line.startswith("BROWSER"):  # (python-xlib prints a warning on stdout first)
        line = p.stdout.readline()
        assert line, p.stderr.read()
    pid = int(line.split()[1])
    assert _group_alive(pid)
    if how == "sigkill":
        p.kill()
    p.wait(30)
    if how == "raise":
        assert "boom" in p.stderr.read()
    deadline = time.monotonic() + 10
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(pid)


def test_learn_cli_builds_miniwob_envs_and_rejects_mixtures():
    from agent.learn_cli import make_task_env

    with pytest.raises(UserError, match="mixed"):
        make_task_env(["miniwob-click-test", "click-button"], None)
    with pytest.raises(UserError, match="unknown MiniWoB"):
        make_task_env(["miniwob-click-nothing"], None)
    env = make_task_env(["miniwob-click-test", "miniwob-click-button"], None)
    try:
        assert isinstance(env.unwrapped, MiniWobEnv)
        obs, _ = env.reset(seed=0, options={"task": "miniwob-click-button"})
        assert env.unwrapped.task == "miniwob-click-button" and obs["instruction"].startswith("Click on the")
    finally:
        env.close()


def test_bench_miniwob_writes_runs_with_speed_and_reset_time(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "squirrel", "bench", "miniwob", "--tasks", "click-test", "--agents",
                        "random", "--steps", "40", "--curve-every", "20", "--window", "5", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["finished"] and d["tasks"] == ["miniwob-click-test"] and len(d["runs"]) == 1
    run = d["runs"][0]
    assert run["env_steps"] == 40 and len(run["curve"]) == 2 and run["steps_per_s"] > 0
    assert 0 < run["reset_ms_median"] < 1000 and run["browser_restarts"] == 0
    assert d["summary"]["miniwob-click-test"]["random"]["reset_ms_median_mean"] == run["reset_ms_median"]


@pytest.mark.parametrize("bench,task", [("miniwob", "click-nothing"), ("learn", "miniwob-click-nothing")])
def test_benches_reject_unknown_miniwob_tasks_in_one_line(bench, task):
    r = subprocess.run([sys.executable, "-m", "squirrel", "bench", bench, "--tasks", task, "--json", "/dev/null"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "unknown MiniWoB" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
