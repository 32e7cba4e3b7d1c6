"""`squirrel bench perception` runs end to end with a tiny budget and writes the issue's JSON keys."""

import json

import pytest

from squirrel.cli import main


@pytest.mark.xvfb
def test_bench_perception_smoke(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)  # the bench starts its own Xvfb
    out = tmp_path / "perception.json"
    rc = main(["bench", "perception", "--json", str(out), "--encoders", "squirrel-vit-t16",
               "--forward-repeats", "3", "--backward-repeats", "1", "--capture-repeats", "5"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["default"] == "squirrel-vit-t16"
    c = r["configs"]["squirrel-vit-t16"]
    assert {"forward_b1_ms_median", "fwd_bwd_b32_ms_median", "params"} <= set(c)
    assert 0 < c["forward_b1_ms_best_round_median"] <= c["forward_b1_ms_p90"]
    assert c["params"] > 1_000_000 and c["forward_b1_ms_median"] > 0 and c["fwd_bwd_b32_ms_median"] > 0
    assert 0 < r["capture_ms_median"] < 50 and 0 < r["preprocess_ms_median"] < 50
    assert {"cold_ms", "cached_ms"} <= set(r["text"]) and r["text"]["cached_ms"] < r["text"]["cold_ms"]


def test_bench_perception_unknown_encoder(capsys):
    assert main(["bench", "perception", "--encoders", "nope"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err
