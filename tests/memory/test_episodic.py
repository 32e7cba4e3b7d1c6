import numpy as np
import pytest

from memory.db import AgentDB
from memory.episodic import EpisodicMemory
from memory.index import normalise
from squirrel.errors import UserError

D = 64


CENTRES = np.random.default_rng(99).standard_normal((200, D)).astype(np.float32)


def keys_like_states(n, rng, noise=0.6):
    """Keys that cluster the way states of a few screens do (noisy copies of 200 prototypes)."""
    return (CENTRES[rng.integers(0, len(CENTRES), n)] + noise * rng.standard_normal((n, D))).astype(np.float32)


def fill(mem, keys, rng, tasks=("a",), success_every=0):
    ids = []
    for i, k in enumerate(keys):
        ids.append(mem.add(tasks[i % len(tasks)], k, {"kind": "click", "i": i}, rng.standard_normal(16), float(i % 7),
                           bool(success_every) and i % success_every == 0))
    return ids


def brute_force(ids, keys, q, k):
    sims = normalise(keys) @ normalise(q)[0]
    return [ids[j] for j in np.argsort(-sims, kind="stable")[:k]]


@pytest.fixture
def db(tmp_path):
    with AgentDB.open(tmp_path) as d:
        yield d


def test_exact_index_returns_true_nearest_neighbours(db):
    rng = np.random.default_rng(0)
    mem = EpisodicMemory(db, key_dim=D, capacity=10_000, per_task_quota=10_000)
    keys = keys_like_states(3000, rng)
    ids = fill(mem, keys, rng, tasks=("a", "b"))
    assert mem.index_kind == "flat"
    for q in keys_like_states(30, rng):
        hits = mem.query(q, 10)
        assert [h.id for h in hits] == brute_force(ids, keys, q, 10)
        assert hits[0].similarity >= hits[-1].similarity
        assert abs(hits[0].similarity - float(normalise(q)[0] @ normalise(keys[ids.index(hits[0].id)])[0])) < 1e-5
    h = mem.query(keys[5], 1)[0]
    assert (h.id, h.task, h.action, h.ret, h.success) == (ids[5], "b", {"kind": "click", "i": 5}, 5.0, False)
    assert h.target_embedding.shape == (16,) and h.distance < 1e-5
    assert all(h.task == "a" for h in mem.query(keys[5], 5, task="a"))


def test_approximate_index_recall_against_brute_force(db):
    """Above exact_limit the index is IVF; stated bound: recall@10 >= 0.9 on state-like keys."""
    rng = np.random.default_rng(1)
    mem = EpisodicMemory(db, key_dim=D, capacity=100_000, per_task_quota=100_000, exact_limit=1000)
    keys = keys_like_states(6000, rng)
    ids = mem.add_many("a", keys, [{}] * len(keys), [None] * len(keys), [0.0] * len(keys), [False] * len(keys))
    assert mem.index_kind.startswith("IVF")
    recall = np.mean([len({h.id for h in mem.query(q, 10)} & set(brute_force(ids, keys, q, 10))) / 10
                      for q in keys_like_states(50, rng)])
    assert recall >= 0.9, recall


def test_eviction_keeps_bound_successes_and_quotas(db):
    rng = np.random.default_rng(2)
    mem = EpisodicMemory(db, key_dim=D, capacity=300, per_task_quota=150)
    successes = set()
    for i in range(2000):
        task = "greedy" if i % 4 else ("b" if i % 8 == 0 else "c")  # "greedy" writes 3/4 of everything
        ok = i % 25 == 0
        eid = mem.add(task, rng.standard_normal(D), {"i": i}, None, float(rng.random()), ok)
        if ok:
            successes.add(eid)
        assert len(mem) <= 300 and mem.count() <= 300
        assert max(mem.counts().values()) <= 150
    kept = {r[0] for r in db.read("SELECT id FROM memory")}
    assert successes <= kept  # 80 successes, fewer than the bounds: none evicted
    assert len(mem) == mem.count() == len(kept)
    assert mem.counts()["b"] > 50 and mem.counts()["c"] > 50  # the quota left room for the small tasks


def test_eviction_prefers_redundant_stale_unused_entries(db):
    rng = np.random.default_rng(3)
    mem = EpisodicMemory(db, key_dim=D, capacity=100, per_task_quota=100, evict_fraction=0.0)
    base = rng.standard_normal(D)
    dups = [mem.add("a", base + 0.01 * rng.standard_normal(D), {}, None, 0.0, False) for _ in range(40)]
    distinct = [mem.add("a", rng.standard_normal(D), {}, None, 0.0, False) for _ in range(40)]
    used_keys = rng.standard_normal((20, D))
    used = [mem.add("a", k, {}, None, 0.0, False) for k in used_keys]
    for _ in range(3):
        for k in used_keys:
            mem.query(k, 1)
    for _ in range(30):
        mem.add("a", rng.standard_normal(D), {}, None, 0.0, False)
    kept = {r[0] for r in db.read("SELECT id FROM memory")}
    assert len(kept) == 100
    assert set(used) <= kept  # used entries outlive unused ones
    assert len(set(distinct) & kept) > len(set(dups) & kept) >= 1  # duplicates go first, one survives


def test_reopen_restores_everything(tmp_path):
    rng = np.random.default_rng(4)
    keys = keys_like_states(500, rng)
    qs = keys_like_states(10, rng)
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=400, per_task_quota=300)
        fill(mem, keys, rng, tasks=("a", "b"), success_every=10)
        before = [mem.query(q, 5) for q in qs]
        counts = mem.counts()
        mem.close()
        path = mem.index_path
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=400, per_task_quota=300)
        assert mem.index_path == path and mem.counts() == counts and len(mem) == sum(counts.values())
        after = [mem.query(q, 5) for q in qs]
        for x, y in zip(before, after):
            assert [(h.id, h.action, h.ret, h.success, h.task) for h in x] == [(h.id, h.action, h.ret, h.success, h.task)
                                                                              for h in y]
            assert all(np.array_equal(a.target_embedding, b.target_embedding) for a, b in zip(x, y))


def test_index_catches_up_or_rebuilds_when_missing_or_stale(tmp_path):
    rng = np.random.default_rng(5)
    keys = keys_like_states(300, rng)
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)
        ids = fill(mem, keys[:200], rng)
        mem.save()
        ids += fill(mem, keys[200:], rng)  # added after the save, then "crash" (no save)
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)
        assert len(mem) == 300
        assert [h.id for h in mem.query(keys[250], 3)] == brute_force(ids, keys, keys[250], 3)
        mem.purge(task=None, before=None, vacuum=False)  # a removal makes the saved file stale
        assert len(mem) == 0
    with AgentDB.open(tmp_path) as db:
        assert len(EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)) == 0
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)
        ids = fill(mem, keys, rng)
        mem.save()
        mem.index_path.unlink()  # the index file is deleted
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)
        assert mem.index_path is None and len(mem) == 300
        assert [h.id for h in mem.query(keys[7], 5)] == brute_force(ids, keys, keys[7], 5)
        mem.close()
        mem.index_path.write_bytes(b"garbage")  # a damaged file is ignored
    with AgentDB.open(tmp_path) as db:
        assert [h.id for h in EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000).query(keys[7], 5)] == \
            brute_force(ids, keys, keys[7], 5)


def test_purge_by_task_and_time(db):
    import time

    rng = np.random.default_rng(6)
    mem = EpisodicMemory(db, key_dim=D, capacity=1000, per_task_quota=1000)
    old = fill(mem, keys_like_states(50, rng), rng, tasks=("a", "b"))
    cut = time.time()
    time.sleep(0.01)
    new = fill(mem, keys_like_states(20, rng), rng, tasks=("a",))
    assert mem.purge(task="b") == 25
    assert mem.counts() == {"a": 45}
    assert mem.purge(before=cut) == 25
    assert {h.id for h in mem.query(rng.standard_normal(D), 100)} == set(new)
    assert not set(old) & {r[0] for r in db.read("SELECT id FROM memory")}
    db.purge(task="a", vacuum=False)  # through the database: the live memory notices
    assert len(mem) == 0 and mem.query(rng.standard_normal(D), 3) == []


def test_thumbnails_optional_and_small(db):
    rng = np.random.default_rng(7)
    mem = EpisodicMemory(db, key_dim=D, capacity=10, per_task_quota=10)
    i = mem.add("a", rng.standard_normal(D), {}, None, 0.0, True, thumbnail=b"tiny")
    assert mem.thumbnail(i) == b"tiny" and mem.entries()[0].has_thumbnail
    with pytest.raises(ValueError):
        mem.add("a", rng.standard_normal(D), {}, None, 0.0, True, thumbnail=bytes(100_000))
    off = EpisodicMemory(db, key_dim=D, capacity=10, per_task_quota=10, store_thumbnails=False)
    assert off.thumbnail(off.add("a", rng.standard_normal(D), {}, None, 0.0, True, thumbnail=b"tiny")) is None


def test_key_size_is_checked(db):
    EpisodicMemory(db, key_dim=D)
    with pytest.raises(UserError, match="keys of size"):
        EpisodicMemory(db, key_dim=D + 1)
    mem = EpisodicMemory(db, key_dim=D)
    with pytest.raises(ValueError):
        mem.add("a", np.ones(D + 1), {}, None, 0.0, True)
    with pytest.raises(ValueError):
        mem.add("a", np.zeros(D), {}, None, 0.0, True)


def test_panel_reads_from_a_readonly_connection(tmp_path):
    rng = np.random.default_rng(8)
    with AgentDB.open(tmp_path) as db:
        mem = EpisodicMemory(db, key_dim=D, capacity=100, per_task_quota=100)
        keys = keys_like_states(30, rng)
        ids = fill(mem, keys, rng)
        with AgentDB.open(tmp_path, readonly=True) as ro:
            view = EpisodicMemory(ro, key_dim=D, capacity=100, per_task_quota=100)
            assert [h.id for h in view.query(keys[3], 3)] == brute_force(ids, keys, keys[3], 3)
            more = fill(mem, keys_like_states(5, rng), rng)
            assert set(more) <= {h.id for h in view.query(keys[0], 35)}  # sees the writer's new entries
