import os
import subprocess
import sys

import pytest

from agent.display import VirtualDisplay

pytestmark = pytest.mark.xvfb


def test_two_displays_are_distinct_and_stopped():
    with VirtualDisplay() as a, VirtualDisplay() as b:
        assert a.name != b.name and a.running and b.running
        lock_a = f"/tmp/.X11-unix/X{a.name[1:]}"
        assert os.path.exists(lock_a)
    assert not a.running and not b.running
    assert not os.path.exists(lock_a)


def test_display_answers_x_clients(xdisplay):
    code = "from Xlib.display import Display; d = Display(); print(d.screen().width_in_pixels, d.has_extension('XTEST'))"
    out = subprocess.run([sys.executable, "-c", code], env=xdisplay.env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1].split() == ["1024", "True"]


def test_display_for_named_does_not_start_or_stop(xdisplay):
    from agent.display import display_for

    with display_for(xdisplay.name) as name:
        assert name == xdisplay.name
    assert xdisplay.running
