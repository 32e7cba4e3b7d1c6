"""`squirrel bench memory` runs end to end with a tiny budget and writes the issue's JSON keys."""

import json
import subprocess
import sys

from squirrel.cli import main


def test_bench_memory_smoke(tmp_path, capsys):
    out = tmp_path / "memory.json"
    rc = main(["bench", "memory", "--json", str(out), "--sizes", "1000", "12000", "--exact-limit", "5000",
               "--queries", "30", "--brute-queries", "3", "--recall-queries", "30", "--inserts", "100",
               "--episodes", "20", "--stress-size", "12000"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert set(r["sizes"]) == {"1000", "12000"}
    for row in r["sizes"].values():
        assert {"query_ms_median", "query_ms_p99", "brute_ms_median"} <= set(row)
        assert 0 < row["query_ms_median"] <= row["query_ms_p99"]
    assert r["sizes"]["1000"]["index"] == "flat" and r["sizes"]["1000"]["recall_at_10"] == 1.0
    assert r["sizes"]["12000"]["index"].startswith("IVF") and r["sizes"]["12000"]["recall_at_10"] >= 0.9
    stress = r["stress"]["12000"]
    assert stress["nprobe"] >= r["sizes"]["12000"]["nprobe"] and stress["nprobe_tuning_recall"] >= 0.95
    assert r["insert_per_s"] > 0 and r["db_bytes_per_1000_episodes"] > 0
    assert "{" not in capsys.readouterr().out  # JSON goes only where --json says


def test_bench_memory_help_shows_field_docs():
    r = subprocess.run([sys.executable, "-m", "squirrel", "bench", "memory", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Neighbours per query" in r.stdout
