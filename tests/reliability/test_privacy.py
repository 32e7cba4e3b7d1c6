"""By default no full frame persists: after a learning run the home holds weights, the database (whose blobs are
embeddings and small crops), TensorBoard scalars and the curve, and no image anywhere."""

import subprocess
import sys
from pathlib import Path

from memory.db import MAX_THUMBNAIL_BYTES, AgentDB

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
FRAME_BYTES = 160 * 210 * 3


def test_no_full_frame_persists_after_learning(tmp_path):
    r = subprocess.run([sys.executable, "-m", "squirrel", "learn", "--tasks", "fake-click", "--steps", "80", "--home",
                        str(tmp_path), "--no-progress", "--agent.encoder", TINY, "--agent.rollout", "32",
                        "--checkpoint-every", "40"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(p.parts[0] in ("checkpoints", "tb") or p.name in ("agent.db", "agent.db-wal", "agent.db-shm",
                                                                           "curve.json", "lock") for p in files), files
    assert not [p for p in files if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".npy", ".npz", ".ppm", ".bmp")]
    with AgentDB.open(tmp_path, readonly=True) as db:
        assert db.read("SELECT count(*) FROM steps")[0][0] >= 60
        for table, col in db.read("SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p "
                                  "WHERE m.type = 'table'"):
            biggest = db.read(f"SELECT coalesce(max(length({col})), 0) FROM {table} WHERE typeof({col}) = 'blob'")[0][0]
            assert biggest <= MAX_THUMBNAIL_BYTES < FRAME_BYTES, (table, col, biggest)
