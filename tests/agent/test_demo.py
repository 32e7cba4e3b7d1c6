"""Smoke-run `squirrel demo` and `squirrel learn` on the real playground with a tiny budget."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
pytestmark = pytest.mark.xvfb


def run(args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "squirrel", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return r


def test_demo_writes_a_report(tmp_path):
    run(["demo", "--steps", "96", "--home", str(tmp_path), "--no-pretrain", "--agent.encoder", TINY, "--agent.rollout", "48"])
    png = tmp_path / "report" / "learning-curves.png"
    assert png.exists() and png.stat().st_size > 1000
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert {r["task"] for r in curve["runs"]} <= {"click-shape", "confirm-dialog"} and curve["env_steps"] >= 96


def test_learn_on_the_playground_writes_curve_and_checkpoint(tmp_path):
    out = tmp_path / "curve.json"
    run(["learn", "--tasks", "click-button,enter-text", "--steps", "80", "--home", str(tmp_path), "--json", str(out),
         "--curve-every", "20", "--no-progress", "--agent.encoder", TINY, "--agent.rollout", "40"])
    d = json.loads(out.read_text())
    assert {r["task"] for r in d["runs"]} == {"click-button", "enter-text"} and d["updates"] >= 2
    for r in d["runs"]:
        assert r["agent"] == "squirrel" and r["curve"] and all(0 <= s <= 1 for _, s in r["curve"])
    assert list((tmp_path / "checkpoints").glob("ckpt-*.safetensors"))


def test_learn_unknown_task_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "squirrel", "learn", "--tasks", "no-such-task", "--home", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown task" in r.stderr and "Traceback" not in r.stderr


def test_bench_latency_writes_its_json(tmp_path):
    out = tmp_path / "lat.json"
    run(["bench", "latency", "--decisions", "20", "--loop-steps", "40", "--tasks", "click-button", "--json", str(out),
         "--agent.encoder", TINY, "--agent.rollout", "32"])
    d = json.loads(out.read_text())
    for k in ("decision_ms_median", "decision_ms_p90", "loop_steps_per_s", "oracle_steps_per_s"):
        assert d[k] > 0
    assert d["decision_ms_p90"] >= d["decision_ms_median"]
    assert d["memory_entries"] is not None  # decisions were timed with recall on, as `squirrel learn` runs them
