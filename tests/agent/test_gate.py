import threading
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import KEYS, Action, ActionType
from agent.fake import FakeDesktopEnv
from agent.gate import GateConfig, SafetyGate, StopFlag


class Recorder(FakeDesktopEnv):
    """The fake desktop, remembering every action that reached it."""

    def __init__(self):
        super().__init__(max_steps=10_000)
        self.executed: list[tuple[float, Action]] = []

    def step(self, action):
        self.executed.append((time.monotonic(), action))
        return super().step(action)


def gated(**cfg):
    env = SafetyGate(Recorder(), GateConfig(**cfg))
    env.reset(seed=0)
    return env


def test_outside_window_is_refused_and_not_executed():
    env = gated()
    _, _, _, _, info = env.step(Action(ActionType.CLICK, 160, 5))
    assert "outside the task window" in info["refused"]
    _, _, _, _, info = env.step(Action(ActionType.DRAG, 5, 5, 5, 400))
    assert "outside" in info["refused"]
    assert env.unwrapped.executed == []


def test_denied_and_unknown_chords_are_refused():
    env = gated()
    for chord in ("ctrl+alt+Delete", "alt+F4", "super+l", "ctrl+alt+F2"):
        _, _, _, _, info = env.step(Action(ActionType.KEY, key=chord))
        assert info["refused"].startswith(("denied", "key not allowed")), chord
    assert env.unwrapped.executed == []
    env.step(Action(ActionType.KEY, key="Return"))
    assert len(env.unwrapped.executed) == 1


def test_stop_flag_from_another_thread_and_process(tmp_path):
    env = gated()
    t = threading.Thread(target=env.stop.set)
    t.start()
    t.join()
    _, _, _, truncated, info = env.step(Action(ActionType.CLICK, 5, 5))
    assert info["refused"] == "stopped" and truncated and env.unwrapped.executed == []
    flag = StopFlag(str(tmp_path / "stop"))
    env2 = SafetyGate(Recorder(), stop=flag)
    env2.reset(seed=0)
    (tmp_path / "stop").touch()  # what another process does
    _, _, _, _, info = env2.step(Action(ActionType.CLICK, 5, 5))
    assert info["refused"] == "stopped" and env2.unwrapped.executed == []


def test_rate_cap_spaces_actions():
    env = gated(max_actions_per_s=200)
    for _ in range(20):
        env.step(Action(ActionType.KEY, key="Tab"))
    times = np.array([t for t, _ in env.unwrapped.executed])
    assert len(times) == 20 and np.diff(times).min() >= 1 / 200 - 1e-3


actions = st.builds(
    Action, st.sampled_from(list(ActionType)), st.integers(-10_000, 10_000), st.integers(-10_000, 10_000),
    st.integers(-10_000, 10_000), st.integers(-10_000, 10_000),
    st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), st.tuples(st.integers(-5, 80), st.integers(-5, 80)))


@settings(max_examples=300, deadline=None)
@given(st.lists(actions, min_size=1, max_size=20), st.integers(0, 19))
def test_no_policy_output_escapes_the_gate(seq, stop_at):
    env = gated(max_actions_per_s=1e6)
    for i, a in enumerate(seq):
        if i == stop_at:
            env.stop.set()
        before = len(env.unwrapped.executed)
        env.step(a)
        if i >= stop_at:
            assert len(env.unwrapped.executed) == before, "acted after stop"
    for _, a in env.unwrapped.executed:
        if a.type in (ActionType.CLICK, ActionType.DOUBLE_CLICK, ActionType.RIGHT_CLICK, ActionType.DRAG,
                      ActionType.SCROLL_UP, ActionType.SCROLL_DOWN):
            assert 0 <= a.x < 160 and 0 <= a.y < 210
        if a.type == ActionType.DRAG:
            assert 0 <= a.x2 < 160 and 0 <= a.y2 < 210
        if a.type == ActionType.KEY:
            assert a.key in KEYS


# The gate under attack: a policy allowed every chord (denied ones included) and any rate it asks for.
@settings(max_examples=150, deadline=None)
@given(st.lists(actions, min_size=1, max_size=25), st.integers(0, 30), st.sampled_from([200.0, 500.0]))
def test_denylist_rate_and_stop_hold_whatever_the_policy_sends(seq, stop_at, rate):
    from agent.gate import DENIED_CHORDS, Stopped

    env = SafetyGate(Recorder(), GateConfig(max_actions_per_s=rate, allowed_keys=KEYS + DENIED_CHORDS + ("super+l",)))
    env.reset(seed=0)
    for i, a in enumerate(seq):
        if i == stop_at:
            env.stop.set()
        _, _, _, truncated, info = env.step(a)
        if i >= stop_at:
            assert info.get("refused") == "stopped" and truncated
    executed = env.unwrapped.executed
    assert len(executed) <= min(len(seq), stop_at)
    for _, a in executed:
        if a.type == ActionType.KEY:
            assert a.key not in DENIED_CHORDS and "super" not in a.key.split("+")
    times = np.array([t for t, _ in executed])
    assert len(times) < 2 or np.diff(times).min() >= 1 / rate - 1e-4  # never a burst above the rate
    if stop_at < len(seq):
        import pytest

        with pytest.raises(Stopped):  # a stopped gate never starts another episode; Ctrl-C's save-and-exit path runs
            env.reset(seed=1)
