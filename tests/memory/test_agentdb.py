import sqlite3
import time

import numpy as np
import pytest

import memory.db as dbmod
from memory.db import AgentDB, schema_version
from squirrel.errors import UserError


def _episode(db, task="t", n=3, success=True):
    e = db.begin_episode(task, 7, "type hello and press Enter")
    for i in range(n):
        db.add_step(e, i, {"kind": "click", "offset": [0.5, 0.5]}, reward=0.1 * i, embedding_ids=[i],
                    target=np.full(8, i, np.float32), thumbnail=b"png" if i == 0 else None)
    db.end_episode(e, success, 1.0 if success else 0.0, n)
    return e


def test_open_sets_wal_foreign_keys_and_version(tmp_path):
    with AgentDB.open(tmp_path / "home") as db:
        assert db.read("PRAGMA journal_mode")[0][0] == "wal"
        assert db.read("PRAGMA foreign_keys")[0][0] == 1
        assert db.read("PRAGMA user_version")[0][0] == schema_version()
        assert db.read("PRAGMA busy_timeout")[0][0] > 0
        assert db.path == tmp_path / "home" / "agent.db"
        assert {"tasks", "episodes", "steps", "memory", "tools"} <= {r[0] for r in db.read("SELECT name FROM sqlite_master")}


def test_episodes_steps_round_trip_and_reopen(tmp_path):
    with AgentDB.open(tmp_path) as db:
        a = _episode(db, "a", 3, True)
        b = _episode(db, "b", 2, False)
        running = db.begin_episode("a", 1, "x")
    with AgentDB.open(tmp_path) as db:
        assert [e.id for e in db.episodes()] == [a, b, running]
        assert [e.id for e in db.episodes("a")] == [a, running]
        assert [e.id for e in db.episodes(outcome="failure")] == [b]
        ea = db.episode(a)
        assert (ea.task, ea.seed, ea.success, ea.ret, ea.steps, ea.outcome) == ("a", 7, True, 1.0, 3, "success")
        assert ea.ended >= ea.started
        assert db.episode(b).success is False and db.episode(running).success is None
        steps = db.steps(a)
        assert [s.index for s in steps] == [0, 1, 2]
        assert steps[1].action == {"kind": "click", "offset": [0.5, 0.5]} and steps[1].embedding_ids == [1]
        assert steps[2].target.dtype == np.float32 and np.all(steps[2].target == 2)
        assert steps[0].thumbnail == b"png" and steps[1].thumbnail is None
        assert db.abandon_unfinished() == 1
        assert db.episode(running).outcome == "aborted"
        assert db.tasks() == ["a", "b"]
        assert db.episodes(limit=2)[-1].id == running


def test_thumbnails_must_be_small(tmp_path):
    with AgentDB.open(tmp_path) as db:
        e = db.begin_episode("t", 0, "")
        with pytest.raises(ValueError, match="thumbnail"):
            db.add_step(e, 0, {"kind": "click"}, thumbnail=b"x" * (dbmod.MAX_THUMBNAIL_BYTES + 1))
        assert db.steps(e) == []  # the failed write left nothing


def test_newer_schema_is_a_user_error(tmp_path):
    AgentDB.open(tmp_path).close()
    c = sqlite3.connect(tmp_path / "agent.db")
    c.execute(f"PRAGMA user_version = {schema_version() + 1}")
    c.close()
    with pytest.raises(UserError, match="newer Squirrel"):
        AgentDB.open(tmp_path)


def test_corrupt_or_foreign_file_is_a_user_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "agent.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(UserError, match="corrupt"):
        AgentDB.open(tmp_path / "a")
    (tmp_path / "b").mkdir()
    c = sqlite3.connect(tmp_path / "b" / "agent.db")
    c.execute("CREATE TABLE other(x)")
    c.commit()
    c.close()
    with pytest.raises(UserError, match="not a Squirrel"):
        AgentDB.open(tmp_path / "b")
    with pytest.raises(UserError, match="no agent database"):
        AgentDB.open(tmp_path / "c", readonly=True)


def test_locked_database_is_a_user_error(tmp_path):
    with AgentDB.open(tmp_path, timeout=0.2) as db:
        other = sqlite3.connect(tmp_path / "agent.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(UserError, match="locked"):
                db.begin_episode("t", 0, "")
        finally:
            other.execute("ROLLBACK")
            other.close()
        db.begin_episode("t", 0, "")  # works again once the lock is gone


def test_forward_migration_keeps_data(tmp_path, monkeypatch):
    with AgentDB.open(tmp_path) as db:
        e = _episode(db)

    def v2(c):
        c.execute("ALTER TABLE episodes ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS + [v2])
    with AgentDB.open(tmp_path) as db:
        assert db.read("PRAGMA user_version")[0][0] == len(dbmod.MIGRATIONS)
        assert db.read("SELECT note FROM episodes WHERE id = ?", (e,)) == [("",)]
        assert db.episode(e).steps == 3


def test_reader_in_another_connection_sees_commits(tmp_path):
    with AgentDB.open(tmp_path) as db:
        reader = AgentDB.open(tmp_path, readonly=True)
        e = _episode(db)
        assert [x.id for x in reader.episodes()] == [e]
        with pytest.raises(RuntimeError):
            reader.begin_episode("t", 0, "")
        reader.close()


def test_purge_by_task_and_time_then_vacuum(tmp_path):
    with AgentDB.open(tmp_path) as db:
        for _ in range(50):
            _episode(db, "old", 20)
        cut = time.time()
        time.sleep(0.01)
        keep = _episode(db, "new", 2)
        _episode(db, "other", 2)
        big = db.size_bytes()
        assert db.purge(before=cut) == {"episodes": 50, "memory": 0}
        assert db.read("SELECT count(*) FROM steps WHERE episode_id NOT IN (SELECT id FROM episodes)") == [(0,)]
        assert db.size_bytes() < big
        assert db.purge(task="other")["episodes"] == 1
        assert [e.id for e in db.episodes()] == [keep]
        assert db.integrity_check() == "ok"


def test_v1_database_upgrades_keeping_ids_steps_and_demonstrations(tmp_path, monkeypatch):
    import memory.db as m

    monkeypatch.setattr(m, "MIGRATIONS", m.MIGRATIONS[:1])  # a database written by schema v1
    db = m.AgentDB.open(tmp_path)
    tid = db.task_id("t")
    with db.transaction() as c:
        ins = "INSERT INTO episodes(task_id, seed, instruction, started) VALUES (?, ?, ?, 0)"
        demo = c.execute(ins, (tid, 1, "[demonstration] Click it.")).lastrowid
        gone = c.execute(ins, (tid, 2, "x")).lastrowid
        c.execute("DELETE FROM episodes WHERE id = ?", (gone,))
        own = c.execute(ins, (tid, 3, "Click it.")).lastrowid
    db.add_step(demo, 0, {"kind": "click"}, 1.0)
    db.end_episode(demo, True, 1.0, 1)
    db.close()
    monkeypatch.undo()
    with m.AgentDB.open(tmp_path) as db:
        assert db.read("PRAGMA user_version")[0][0] == m.schema_version() and db.read("PRAGMA foreign_keys")[0][0] == 1
        d, o = db.episode(demo), db.episode(own)
        assert (d.source, d.instruction, d.outcome) == ("person", "Click it.", "success") and o.source == "agent"
        assert len(db.steps(demo)) == 1 and db.read("PRAGMA integrity_check")[0][0] == "ok"
        new = db.begin_episode("t", 4, "y")
        assert new > own  # ids are never reused across the rebuild
        db.end_episode(new, None, 0.0, 2)
        assert db.episode(new).outcome == "pending" and db.episode(new).success is None
        db.purge("t")  # foreign keys still cascade
        assert db.read("SELECT count(*) FROM steps")[0][0] == 0


def test_trim_keeps_the_database_under_its_budget_oldest_decided_episodes_first(tmp_path):
    import numpy as np

    from memory.db import AgentDB

    with AgentDB.open(tmp_path) as db:
        pending = db.begin_episode("t", 0, "wait for me")
        db.end_episode(pending, None, 0.0, 1)
        sizes = []
        for round_ in range(6):
            for i in range(150):
                e = db.begin_episode("t", i, "x" * 50)
                for k in range(5):
                    db.add_step(e, k, {"kind": "click", "x": k}, 0.0, target=np.random.rand(192))
                db.end_episode(e, i % 2 == 0, 1.0, 5)
            db.trim(1_500_000)
            sizes.append((tmp_path / "agent.db").stat().st_size)
            assert db.used_bytes() <= 1_500_000
        assert sizes[-1] == sizes[-2] == sizes[-3]  # the file stops growing: freed pages are reused
        assert db.episode(pending).outcome == "pending"  # never trimmed
        ids = [e.id for e in db.episodes()]
        assert ids == sorted(ids) and ids[1] > 150  # the oldest went first
        assert db.read("PRAGMA foreign_key_check") == [] and db.read("SELECT count(*) FROM steps WHERE episode_id NOT IN "
                                                                      "(SELECT id FROM episodes)")[0][0] == 0
