"""Screen capture on a private Xvfb: shape, dtype, and the pixels that were drawn."""

import numpy as np
import pytest

from perception.capture import ScreenCapture
from squirrel.errors import UserError


def _draw(display_name, rects):
    """Fill rectangles (x, y, w, h, 0xRRGGBB) on the root window with python-xlib."""
    from Xlib import display as xdisplay

    d = xdisplay.Display(display_name)
    root = d.screen().root
    for x, y, w, h, pixel in rects:
        root.fill_rectangle(root.create_gc(foreground=pixel), x, y, w, h)
    d.sync()
    d.close()


@pytest.mark.xvfb
def test_grab_returns_what_was_drawn(xdisplay):
    _draw(xdisplay.name, [(0, 0, 160, 210, 0x000000), (10, 20, 30, 40, 0xFF0000), (50, 60, 5, 7, 0x1080F0)])
    with ScreenCapture() as cap:  # DISPLAY points at the fixture's Xvfb
        frame = cap.grab(0, 0, 160, 210)
        region = cap.grab(10, 20, 30, 40)
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert (frame[20:60, 10:40] == (255, 0, 0)).all()
    assert (frame[60:67, 50:55] == (0x10, 0x80, 0xF0)).all()
    assert (frame[19, 10:40] == 0).all() and (frame[20:60, 40] == 0).all()
    assert region.shape == (40, 30, 3) and (region == (255, 0, 0)).all()


@pytest.mark.xvfb
def test_explicit_display_name(xdisplay, monkeypatch):
    monkeypatch.delenv("DISPLAY")
    _draw(xdisplay.name, [(100, 100, 4, 4, 0x00FF00)])
    with ScreenCapture(xdisplay.name) as cap:
        assert (cap.grab(100, 100, 4, 4) == (0, 255, 0)).all()


def test_no_display_is_a_user_error():
    with pytest.raises(UserError, match="cannot open X display :64999"):
        ScreenCapture(":64999")
