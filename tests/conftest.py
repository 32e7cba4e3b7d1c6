"""Shared fixtures. Every display a test uses is started by the test and stopped after it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Qt aborts the whole process with neither DISPLAY nor a platform set; panel tests run offscreen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The agent starts from the reading prior in the user's cache when there is one (pretrained="auto"): tests get an
# empty cache of their own, so they behave the same on every machine (a test that wants a prior makes one).
os.environ["SQUIRREL_CACHE"] = tempfile.mkdtemp(prefix="squirrel-test-cache-")


@pytest.fixture
def xdisplay(monkeypatch):
    """A private Xvfb display for this test only (DISPLAY and XAUTHORITY point at it)."""
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed; run scripts/setup")
    from agent.display import VirtualDisplay

    with VirtualDisplay() as vd:
        monkeypatch.setenv("DISPLAY", vd.name)
        monkeypatch.setenv("XAUTHORITY", vd.xauthority)
        yield vd
