"""`squirrel bench crash` with one SIGKILL in each phase (acting, an update, a checkpoint, a mining pass) on the
fake desktop: every resume starts where it should, the database stays sound, no committed episode is lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


@pytest.mark.slow
def test_kill9_in_each_phase_then_resume(tmp_path):
    out = tmp_path / "crash.json"
    r = subprocess.run([sys.executable, "-m", "squirrel", "bench", "crash", "--kills", "4", "--encoder", TINY,
                        "--checkpoint-every", "100", "--rollout", "32", "--json", str(out), "--home", str(tmp_path / "home")],
                       capture_output=True, text=True, timeout=600)
    d = json.loads(out.read_text())
    assert r.returncode == 0 and d["ok"], (d["problems"], r.stdout[-2000:], r.stderr[-2000:])
    c = d["counts"]
    assert c["kills"] == 4 and c["resumes_ok"] == 4 and c["integrity_ok"] == c["checks"] == 5
    assert c["lost_episodes"] == 0 and c["fallbacks_silent"] == 0
    assert c["by_target"] == {"acting": 1, "learning": 1, "checkpointing": 1, "mining": 1}
    assert all(r["alive"] for r in d["rounds"])  # each kill hit a live process
    assert sum(r["phase"] in ("learning", "checkpointing", "mining") for r in d["rounds"]) >= 2  # aimed kills land
    assert c["resumed_steps"] == sorted(c["resumed_steps"])  # the curve never goes back
    assert d["final"]["ok"] and d["final"]["env_steps"] >= c["resumed_steps"][-1] + 200
    assert d["rounds"][-1]["episodes_ended"] > d["rounds"][0]["episodes_ended"] > 0
