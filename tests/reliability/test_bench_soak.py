"""`squirrel bench soak` on a tiny run: the JSON has its samples and trends, and SIGTERM saved a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


@pytest.mark.slow
def test_soak_writes_samples_and_trends(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, "-m", "squirrel", "bench", "soak", "--minutes", "0.3", "--sample-s", "3",
                        "--tasks", "fake-click", "--encoder", TINY, "--json", str(out), "--home", str(tmp_path / "home")],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert len(d["samples"]) >= 5
    for s in d["samples"][1:]:  # (the first is taken as the learner starts)
        assert s["processes"] >= 1 and s["rss_mb"] > 50 and s["fds"] >= 3 and s["db_mb"] >= 0
    assert d["samples"][-1]["db_mb"] > 0  # (on a loaded machine the learner may still be importing at the second)
    assert d["samples"][-1]["episodes"] > d["samples"][1]["episodes"] >= 0
    for k in ("rss_mb", "fds", "db_mb", "home_mb", "processes"):
        assert d["trends"][k]["samples"] >= 3 and d["trends"][k]["bounded"] in (True, False)
        assert isinstance(d["trends"][k]["slope_per_min"], float)
    assert d["exit_code"] == 0 and d["checkpoint_saved"] and not d["crashed"] and d["env_steps"] > 0
