"""Both encoders build and run with every network connection refused."""

import socket

import numpy as np
import pytest

from perception.encoder import create_encoder, list_encoders
from perception.text import InstructionEncoder


def test_both_encoders_build_and_run_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # not relied on
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    frames = np.zeros((2, 210, 160, 3), np.uint8)
    for name in list_encoders():
        enc = create_encoder(name)
        tokens, pooled = enc(enc.preprocess(frames))
        assert tokens.shape[:2] == (2, enc.grid[0] * enc.grid[1])
    r = InstructionEncoder().encode("Click the Submit button")
    assert r.sentence.shape == (384,) and len(r.spans) == 4
