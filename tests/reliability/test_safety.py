"""Stopping and confinement on a real X display: a target window on a display Squirrel did not start, the
fail-safe corner and SIGINT, each through the real `squirrel learn` where it matters."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.actions import Action, ActionType
from agent.gate import GateConfig, Stopped
from agent.registration import make_env
from squirrel.errors import UserError

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
NOTE_APP = Path(__file__).parents[1] / "agent" / "apps" / "note_app.py"  # "Squirrel note" at (100, 100), 160x210


def learn(*args):
    return [sys.executable, "-m", "squirrel", "learn", "--no-progress", "--no-tensorboard", "--agent.encoder", TINY,
            "--agent.threads", "1", *args]


def wait_for_window(actuator, title, timeout=20.0):
    from agent.gate import TargetWindow

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if TargetWindow(actuator, title).rect() is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"no window {title!r}")


@pytest.mark.xvfb
def test_target_window_confines_every_action_and_the_agent_stops_when_it_goes(xdisplay, tmp_path):
    env = make_env("click-button", gate=GateConfig(target_window="Squirrel note", max_actions_per_s=1e6),
                   display=xdisplay.name)
    note = None
    try:
        with pytest.raises(UserError, match="no window titled 'Squirrel note'"):  # refused before the window exists
            env.reset(seed=0)
        note = subprocess.Popen([sys.executable, str(NOTE_APP), str(tmp_path / "out")], env=xdisplay.env())
        wait_for_window(env.unwrapped.desktop.actuator, "Squirrel note")
        env.reset(seed=0)
        ox, oy = env.unwrapped.origin  # the playground's task window, partly under the note window
        assert env.target().rect() == (100, 100, 160, 210)
        # a point in the task window but outside the target window: refused; one inside both: sent
        _, _, _, _, info = env.step(Action(ActionType.CLICK, 100 - ox - 5, 150 - oy))
        assert info["refused"].startswith("outside the target window")
        _, _, _, _, info = env.step(Action(ActionType.DRAG, 150 - ox, 150 - oy, 90 - ox, 150 - oy))
        assert info["refused"].startswith("outside the target window")
        _, _, _, _, info = env.step(Action(ActionType.CLICK, 150 - ox, 150 - oy))
        assert "refused" not in info
        env.unwrapped.desktop.actuator.move(20, 20)  # no window manager: keys go where the pointer is
        env.unwrapped.desktop.actuator.sync()
        _, _, _, _, info = env.step(Action(ActionType.KEY, key="Tab"))
        assert info["refused"].startswith("the keyboard does not go to the target window")
        note.kill()
        note.wait()
        time.sleep(0.3)
        _, _, _, truncated, info = env.step(Action(ActionType.CLICK, 150 - ox, 150 - oy))
        assert info["refused"] == "target window gone: no window titled 'Squirrel note'" and truncated
        with pytest.raises(UserError, match="no window titled 'Squirrel note' is shown"):
            env.reset(seed=1)
    finally:
        if note is not None and note.poll() is None:
            note.kill()
            note.wait()
        env.close()


@pytest.mark.xvfb
@pytest.mark.slow
def test_learn_on_a_display_needs_a_target_window_and_refuses_a_missing_one(xdisplay, tmp_path):
    env = xdisplay.env()
    r = subprocess.run(learn("--tasks", "click-button", "--steps", "5", "--home", str(tmp_path / "a"),
                             "--display", xdisplay.name), capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "needs --target-window" in r.stderr
    r = subprocess.run(learn("--tasks", "click-button", "--steps", "5", "--home", str(tmp_path / "b"),
                             "--display", xdisplay.name, "--target-window", "No such window"),
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "no window titled 'No such window'" in r.stderr
    r = subprocess.run(learn("--tasks", "click-button", "--steps", "12", "--home", str(tmp_path / "c"),
                             "--display", xdisplay.name, "--target-window", "Squirrel playground"),
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.xvfb
@pytest.mark.slow
def test_failsafe_corner_stops_learn_which_saves_a_checkpoint(xdisplay, tmp_path):
    from agent.actuator import XTestActuator

    p = subprocess.Popen(learn("--tasks", "click-button", "--steps", "100000", "--home", str(tmp_path),
                               "--display", xdisplay.name, "--target-window", "Squirrel playground",
                               "--agent.rollout", "16"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=xdisplay.env())
    hand = XTestActuator(xdisplay.name)  # a person shoving the mouse into the corner
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "agent.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # acting by now
        while p.poll() is None and time.monotonic() < deadline:
            hand.move(0, 0)
            hand.sync()
            time.sleep(0.01)
        out, err = p.communicate(timeout=60)
    finally:
        hand.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "saving a checkpoint" in out
    assert list((tmp_path / "checkpoints").glob("ckpt-*.safetensors"))


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    p = subprocess.Popen(learn("--tasks", "fake-click", "--steps", "100000", "--home", str(tmp_path),
                               "--agent.rollout", "32", "--curve-every", "10"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "curve.json").exists() and time.monotonic() < deadline:  # learning by now
            time.sleep(0.1)
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "stop requested; saving a checkpoint" in out
    steps = [int(c.stem.split("-")[1]) for c in (tmp_path / "checkpoints").glob("ckpt-*.safetensors")]
    assert steps and max(steps) > 0
    assert not (tmp_path / "lock").read_text().strip()  # the home lock was released on the way out


def test_a_stopped_gate_raises_stopped_at_reset():
    from agent.fake import FakeDesktopEnv
    from agent.gate import SafetyGate

    env = SafetyGate(FakeDesktopEnv())
    env.reset(seed=0)
    env.stop.set()
    with pytest.raises(Stopped):
        env.reset(seed=1)
    assert isinstance(Stopped(), KeyboardInterrupt)  # learn's Ctrl-C path saves a checkpoint for it
