"""Episodic memory: (state, goal) keys -> the action taken, what it acted on, and the return that followed.

Entries live in the `memory` table of the agent database (the source of truth); a faiss index over
their keys (`memory.index.KeyIndex`) answers kNN queries. Keys are L2-normalised on the way in and
compared by inner product, so similarities are cosines in [-1, 1].

The index is a cache. It is saved next to the database as `episodic.g<G>.m<M>.t<T>.faiss`: G is the
memory generation it reflects (a counter bumped in the same transaction as every change to the
entries), M the highest entry id it holds. On open, a saved index is used if no entry was removed
since it was written, and catches up on entries added after it; otherwise (missing, stale, corrupt)
it is rebuilt from SQLite. A crash therefore never leaves a wrong index behind.

Retention: at most `capacity` entries, and at most `per_task_quota` per task, so one task cannot
crowd out the rest. When over, a batch is evicted: failures before successes; within those, the
lowest keep-score, where score = return rank + use + recency and near-duplicates of another entry
(cosine above `duplicate_similarity`) lose up to two points, so the memory keeps diverse, useful,
recent, successful entries and drops stale, unused, redundant ones. Frames are never stored: at
most a small thumbnail per entry, and none with `store_thumbnails=False`.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from typing import NamedTuple

import numpy as np

from memory.db import AgentDB, as_timestamp, check_thumbnail, from_blob, to_blob
from memory.index import EXACT_LIMIT, KeyIndex, normalise
from squirrel.errors import UserError

INDEX_RE = re.compile(r"^episodic\.g(\d+)\.m(\d+)\.t(\d+)\.faiss$")


class MemoryHit(NamedTuple):
    id: int
    similarity: float  # cosine of the query key and the entry's key
    action: dict
    target_embedding: np.ndarray | None
    ret: float
    success: bool
    task: str

    @property
    def distance(self) -> float:
        """1 - cosine similarity."""
        return 1.0 - self.similarity


class MemoryEntry(NamedTuple):
    """An entry as the panel lists it (no key)."""

    id: int
    task: str
    episode_id: int | None
    step: int | None
    action: dict
    ret: float
    success: bool
    created: float
    uses: int
    has_thumbnail: bool


class EpisodicMemory:
    """Bounded kNN memory over one agent database. See the module docstring for the policy."""

    def __init__(self, db: AgentDB, key_dim: int = 512, capacity: int = 100_000, per_task_quota: int = 25_000,
                 store_thumbnails: bool = True, *, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None,
                 evict_fraction: float = 0.02, duplicate_similarity: float = 0.9, diversity_pool: int = 4096):
        if capacity < 1 or per_task_quota < 1:
            raise ValueError("capacity and per_task_quota must be at least 1")
        self.db = db
        self.key_dim = int(key_dim)
        self.capacity = int(capacity)
        self.per_task_quota = int(per_task_quota)
        self.store_thumbnails = store_thumbnails
        self.exact_limit = exact_limit
        self.nprobe = nprobe  # IVF lists per query; None: tuned to recall@10 >= 0.95 at each build
        self.evict_fraction = evict_fraction
        self.duplicate_similarity = duplicate_similarity
        self.diversity_pool = diversity_pool
        self._pending_uses: dict[int, int] = {}
        self._task_names: dict[int, str] = {}
        with db.lock:
            self._check_key_dim()
            self._open_index()
            if not db.readonly:
                self._enforce_bounds()  # e.g. a smaller capacity than the entries were written with

    # ---------------------------------------------------------------- state and index upkeep
    def _check_key_dim(self) -> None:
        stored = self.db.get_meta("episodic_key_dim")
        if stored is None:
            if not self.db.readonly:
                self.db.set_meta("episodic_key_dim", str(self.key_dim))
        elif int(stored) != self.key_dim:
            raise UserError(f"the episodic memory in {self.db.home} has keys of size {stored}, not {self.key_dim}: "
                            "use the same encoders and goal size, or another home (or purge the memory)")

    def _generations(self) -> tuple[int, int, int]:
        """(generation, generation of the last removal, highest id ever assigned) as in the database now."""
        rows = self.db.read("SELECT (SELECT value FROM meta WHERE key = 'memory_generation'), "
                            "(SELECT value FROM meta WHERE key = 'memory_removal_generation'), "
                            "(SELECT seq FROM sqlite_sequence WHERE name = 'memory')")
        g, rg, m = rows[0]
        return int(g or 0), int(rg or 0), int(m or 0)

    def _index_files(self) -> list[tuple[int, int, int, object]]:
        out = []
        for p in self.db.home.glob("episodic.g*.faiss"):
            m = INDEX_RE.match(p.name)
            if m:
                out.append((int(m[1]), int(m[2]), int(m[3]), p))
        return sorted(out, key=lambda t: t[0])

    @property
    def index_path(self):
        """The saved index file this memory would load, if any."""
        files = self._index_files()
        return files[-1][3] if files else None

    def _open_index(self) -> None:
        gen, rgen, _ = self._generations()
        self._index = None
        for g, m, t, path in reversed(self._index_files()):
            if rgen <= g <= gen:
                try:
                    index = KeyIndex.load(path, trained_on=t, nprobe=self.nprobe)
                except Exception:  # noqa: BLE001 - a damaged cache file: rebuild instead
                    continue
                if index.dim == self.key_dim:
                    self._index, self._gen, self._max_id = index, g, m
                    break
        if self._index is None:
            self._rebuild()
        else:
            self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        """Bring the index up to the database: catch up on added entries, or rebuild after removals."""
        gen, rgen, max_id = self._generations()
        if gen == self._gen and not force:
            return
        if rgen > self._gen:
            self._rebuild()
            return
        with self.db.snapshot():
            rows = self.db.read("SELECT id, key FROM memory WHERE id > ? ORDER BY id", (self._max_id,))
            total = self.db.read("SELECT count(*) FROM memory")[0][0]
            gen, rgen, max_id = self._generations()
        if rows:
            self._index.add(np.array([r[0] for r in rows], np.int64), self._keys_of(rows))
        if len(self._index) != total or self._index.wants_rebuild(self.exact_limit):
            self._rebuild()
            return
        self._gen, self._max_id = gen, max_id
        self._load_counts()

    def _keys_of(self, rows) -> np.ndarray:
        keys = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return keys.reshape(len(rows), self.key_dim)

    def _rebuild(self) -> None:
        """Rebuild the index from SQLite, sized for the current number of entries."""
        with self.db.snapshot():
            gen, _, max_id = self._generations()
            n = self.db.read("SELECT count(*) FROM memory")[0][0]
            ids = np.empty(n, np.int64)
            keys = np.empty((n, self.key_dim), np.float32)
            i, last = 0, -1
            while True:
                rows = self.db.read("SELECT id, key FROM memory WHERE id > ? ORDER BY id LIMIT 50000", (last,))
                if not rows:
                    break
                ids[i:i + len(rows)] = [r[0] for r in rows]
                keys[i:i + len(rows)] = self._keys_of(rows)
                i += len(rows)
                last = rows[-1][0]
        self._index = KeyIndex.build(self.key_dim, ids[:i], keys[:i], exact_limit=self.exact_limit, nprobe=self.nprobe)
        self._gen, self._max_id = gen, max_id
        self._load_counts()

    def _load_counts(self) -> None:
        rows = self.db.read("SELECT task_id, count(*) FROM memory GROUP BY task_id")
        self._counts = {tid: n for tid, n in rows}

    def _task_name(self, tid: int) -> str:
        if tid not in self._task_names:
            self._task_names = dict(self.db.read("SELECT id, name FROM tasks"))
        return self._task_names[tid]

    def save(self) -> None:
        """Write the index next to the database (atomically) so the next open need not rebuild it."""
        if self.db.readonly:
            return
        with self.db.lock:
            self._flush_uses()
            self._refresh()
            name = f"episodic.g{self._gen}.m{self._max_id}.t{self._index.trained_on}.faiss"
            self._index.save(self.db.home / name)
            for _, _, _, p in self._index_files():
                if p.name != name:
                    p.unlink(missing_ok=True)
            for p in self.db.home.glob("episodic.*.faiss.tmp"):
                p.unlink(missing_ok=True)

    def close(self, save: bool = True) -> None:
        """Save the index (unless `save` is False) and flush usage statistics. The database stays open."""
        if save:
            self.save()
        elif not self.db.readonly:
            with self.db.lock:
                self._flush_uses()

    # ---------------------------------------------------------------- writing
    def add(self, task: str, key: np.ndarray, action: dict, target_embedding: np.ndarray | None, ret: float,
            success: bool, thumbnail: bytes | None = None, *, episode_id: int | None = None,
            step: int | None = None) -> int:
        """Store one entry (committed); returns its id. May evict others to stay within the bounds."""
        return self.add_many(task, np.asarray(key)[None], [action], [target_embedding], [ret], [success],
                             [thumbnail], episode_id=episode_id, steps=None if step is None else [step])[0]

    def add_many(self, task: str, keys: np.ndarray, actions: list[dict], target_embeddings: list, rets, successes,
                 thumbnails: list | None = None, *, episode_id: int | None = None,
                 steps: list[int] | None = None) -> list[int]:
        """Store several entries of one task in one transaction (e.g. an episode's steps at its end)."""
        keys = normalise(keys)
        if keys.shape[1] != self.key_dim:
            raise ValueError(f"keys have size {keys.shape[1]}, this memory uses {self.key_dim}")
        n = len(keys)
        thumbnails = thumbnails if (thumbnails is not None and self.store_thumbnails) else [None] * n
        if not (len(actions) == len(target_embeddings) == len(rets) == len(successes) == len(thumbnails) == n):
            raise ValueError("add_many: all lists must have one item per key")
        steps = steps if steps is not None else [None] * n
        now = time.time()
        db = self.db
        with db.lock:
            self._refresh()
            tid = db.task_id(task)
            try:
                # One transaction for the entries and the evictions they cause: the bounds hold on disk too.
                with db.transaction() as c:
                    self._flush_uses(c)
                    ids = []
                    for i in range(n):
                        ids.append(c.execute(
                            "INSERT INTO memory(task_id, episode_id, step, key, action, target, ret, success, thumbnail, "
                            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (tid, episode_id, steps[i], keys[i].tobytes(), json.dumps(actions[i]),
                             to_blob(target_embeddings[i]), float(rets[i]), int(bool(successes[i])),
                             check_thumbnail(thumbnails[i]), now)).lastrowid)
                    gen = db.bump_counter(c, "memory_generation")
                    self._index.add(np.array(ids, np.int64), keys)
                    self._counts[tid] = self._counts.get(tid, 0) + n
                    self._max_id = ids[-1]
                    gen = self._evict(c, tid) or gen
            except BaseException:
                self._rebuild()  # the index may hold entries the rollback removed
                raise
            self._gen = gen
            if self._index.wants_rebuild(self.exact_limit):
                self._rebuild()
        return ids

    def _flush_uses(self, c=None) -> None:
        if not self._pending_uses or self.db.readonly:
            return
        rows = [(n, self._max_id, i) for i, n in self._pending_uses.items()]
        self._pending_uses = {}
        if c is None:
            with self.db.transaction() as c2:
                c2.executemany("UPDATE memory SET uses = uses + ?, last_used = ? WHERE id = ?", rows)
        else:
            c.executemany("UPDATE memory SET uses = uses + ?, last_used = ? WHERE id = ?", rows)

    # ---------------------------------------------------------------- eviction
    def _evict(self, c, tid: int | None) -> int | None:
        """Inside transaction `c`: evict a batch from task `tid` if over its quota, then from all if over
        capacity. Returns the new generation if anything was removed."""
        gen = None
        tids = [tid] if tid is not None else list(self._counts)
        for t in tids:
            n = self._counts.get(t, 0)
            if n > self.per_task_quota:
                need = n - self.per_task_quota + int(self.per_task_quota * self.evict_fraction)
                gen = self._remove_in(c, self._choose_victims(min(need, n), t))
        total = sum(self._counts.values())
        if total > self.capacity:
            need = total - self.capacity + int(self.capacity * self.evict_fraction)
            gen = self._remove_in(c, self._choose_victims(min(need, total), None))
        return gen

    def _choose_victims(self, need: int, tid: int | None) -> list[int]:
        """The `need` entries (of task `tid`, or of all) with the least reason to be kept."""
        self._flush_uses()
        rows = np.array(self.db.read("SELECT id, success, ret, uses, last_used FROM memory"
                                     + ("" if tid is None else " WHERE task_id = ?"), () if tid is None else (tid,)),
                        dtype=np.float64).reshape(-1, 5)
        ids, success, ret, uses, last = rows.T
        n = len(ids)
        if need >= n:
            return ids.astype(np.int64).tolist()
        ret_rank = np.empty(n)
        ret_rank[np.argsort(ret, kind="stable")] = np.arange(n) / max(1, n - 1)
        use = np.log1p(uses) / math.log1p(max(1.0, uses.max()))
        age = (self._max_id - np.maximum(ids, last)) / self.capacity  # ticks = entries added since
        score = ret_rank + use + np.exp(-age)
        order = np.lexsort((score, success))  # failures first, then by score
        pool = order[:min(n, max(need, min(3 * need, need + self.diversity_pool)))]
        # Diversity: an entry with a near-duplicate elsewhere loses up to 2 points; never drop both of a pair.
        pool_ids = ids[pool].astype(np.int64)
        keyrows = {}
        for i in range(0, len(pool_ids), 900):
            chunk = pool_ids[i:i + 900].tolist()
            keyrows.update(self.db.read(f"SELECT id, key FROM memory WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        keys = np.frombuffer(b"".join(keyrows[int(i)] for i in pool_ids), np.float32).reshape(-1, self.key_dim)
        sims, nn = self._index.search(keys, 3)
        nn_id = np.where(nn[:, 0] == pool_ids, nn[:, 1], nn[:, 0])
        nn_sim = np.where(nn[:, 0] == pool_ids, sims[:, 1], sims[:, 0])
        tau = self.duplicate_similarity
        red = np.clip((nn_sim - tau) / max(1e-6, 1 - tau), 0, 1) * (nn_id >= 0)
        adj = score[pool] - 2 * red
        chosen: list[int] = []
        chosen_set: set[int] = set()
        deferred: list[int] = []
        for j in np.lexsort((adj, success[pool])):
            if len(chosen) == need:
                break
            if red[j] > 0 and int(nn_id[j]) in chosen_set:
                deferred.append(int(pool_ids[j]))
                continue
            chosen.append(int(pool_ids[j]))
            chosen_set.add(chosen[-1])
        return chosen + deferred[:need - len(chosen)]

    def _remove_in(self, c, ids: list[int]) -> int:
        """Inside transaction `c` (the caller rebuilds the index if it rolls back): delete entries from the
        database and the index; returns the new generation."""
        for i in range(0, len(ids), 900):
            chunk = ids[i:i + 900]
            for (tid,) in c.execute(f"DELETE FROM memory WHERE id IN ({','.join('?' * len(chunk))}) RETURNING task_id",
                                    chunk).fetchall():
                self._counts[tid] -= 1
        gen = self.db.bump_counter(c, "memory_generation")
        c.execute("INSERT INTO meta(key, value) VALUES ('memory_removal_generation', ?) "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(gen),))
        self._index.remove(ids)
        for i in ids:
            self._pending_uses.pop(i, None)
        return gen

    def _enforce_bounds(self) -> None:
        if sum(self._counts.values()) <= self.capacity and all(n <= self.per_task_quota for n in self._counts.values()):
            return
        try:
            with self.db.transaction() as c:
                gen = self._evict(c, None)
        except BaseException:
            self._rebuild()
            raise
        self._gen = gen or self._gen

    def _remove(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            with self.db.transaction() as c:
                gen = self._remove_in(c, ids)
        except BaseException:
            self._rebuild()
            raise
        self._gen = gen

    def purge(self, task: str | None = None, before: float | datetime | None = None, *, vacuum: bool = True) -> int:
        """Delete the entries of `task` and/or created before `before` (both None: all); VACUUM after, so
        the bytes (thumbnails) are gone from the file. Returns how many were deleted."""
        before = as_timestamp(before)
        where, params = [], []
        if task is not None:
            where.append("task_id = (SELECT id FROM tasks WHERE name = ?)")
            params.append(task)
        if before is not None:
            where.append("created < ?")
            params.append(before)
        with self.db.lock:
            self._refresh()
            ids = [r[0] for r in self.db.read("SELECT id FROM memory" + (" WHERE " + " AND ".join(where) if where else ""),
                                              params)]
            self._remove(ids)
            if self._index.wants_rebuild(self.exact_limit):
                self._rebuild()
            if vacuum:
                self.db.vacuum()
        return len(ids)

    # ---------------------------------------------------------------- reading
    def query(self, key: np.ndarray, k: int = 8, *, task: str | None = None, count_uses: bool = True) -> list[MemoryHit]:
        """The k entries nearest to `key` (most similar first), optionally of one task only. `count_uses=False`:
        the caller chooses among the hits and says which it used (`used`)."""
        q = normalise(key)
        if q.shape != (1, self.key_dim):
            raise ValueError(f"query key must have size {self.key_dim}")
        with self.db.lock:
            self._refresh()
            n = len(self._index)
            if n == 0 or k <= 0:
                return []
            fetch = min(n, k if task is None else 8 * k)
            sims, ids = self._index.search(q, fetch)
            found = [int(i) for i in ids[0] if i >= 0]
            rows = {r[0]: r for r in self.db.read(
                "SELECT id, task_id, action, target, ret, success FROM memory WHERE id IN "
                f"({','.join('?' * len(found))})", found)} if found else {}
            hits = []
            for s, i in zip(sims[0], ids[0]):
                r = rows.get(int(i))
                if r is None:
                    continue
                name = self._task_name(r[1])
                if task is not None and name != task:
                    continue
                hits.append(MemoryHit(int(i), float(s), json.loads(r[2]), from_blob(r[3]), r[4], bool(r[5]), name))
                if len(hits) == k:
                    break
            if count_uses:
                self._count_uses(h.id for h in hits)
        return hits

    def newest_at(self, key: np.ndarray, n: int) -> list[MemoryHit]:
        """The n newest entries stored under exactly this key (newest first; similarity 1). A repeated goal has
        many entries at one key, and the index returns the oldest of such ties: this finds the recent ones. (A scan
        of the keys: milliseconds at a few thousand entries; callers cache it.)"""
        q = normalise(key)
        if q.shape != (1, self.key_dim):
            raise ValueError(f"key must have size {self.key_dim}")
        rows = self.db.read("SELECT id, task_id, action, target, ret, success FROM memory WHERE key = ? "
                            "ORDER BY id DESC LIMIT ?", (q[0].tobytes(), int(n)))
        return [MemoryHit(int(r[0]), 1.0, json.loads(r[2]), from_blob(r[3]), r[4], bool(r[5]), self._task_name(r[1]))
                for r in rows]

    def used(self, ids) -> None:
        """These entries were used (what eviction's score counts), after a `query(count_uses=False)`."""
        with self.db.lock:
            self._count_uses(ids)

    def _count_uses(self, ids) -> None:
        if self.db.readonly:
            return
        for i in ids:
            self._pending_uses[i] = self._pending_uses.get(i, 0) + 1
        if len(self._pending_uses) > 4096:
            self._flush_uses()

    def __len__(self) -> int:
        with self.db.lock:
            self._refresh()
            return len(self._index)

    def count(self, task: str | None = None) -> int:
        """Entries stored, in all or of one task."""
        if task is None:
            return self.db.read("SELECT count(*) FROM memory")[0][0]
        return self.db.read("SELECT count(*) FROM memory m JOIN tasks t ON t.id = m.task_id WHERE t.name = ?",
                            (task,))[0][0]

    def counts(self) -> dict[str, int]:
        """Entries per task."""
        return dict(self.db.read("SELECT t.name, count(*) FROM memory m JOIN tasks t ON t.id = m.task_id GROUP BY t.name"))

    def entries(self, task: str | None = None, limit: int = 100, offset: int = 0) -> list[MemoryEntry]:
        """Entries newest first, for browsing (the panel)."""
        rows = self.db.read(
            "SELECT m.id, t.name, m.episode_id, m.step, m.action, m.ret, m.success, m.created, m.uses, "
            "m.thumbnail IS NOT NULL FROM memory m JOIN tasks t ON t.id = m.task_id"
            + (" WHERE t.name = ?" if task is not None else "") + " ORDER BY m.id DESC LIMIT ? OFFSET ?",
            ((task,) if task is not None else ()) + (limit, offset))
        return [MemoryEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], bool(r[6]), r[7], r[8], bool(r[9]))
                for r in rows]

    def thumbnail(self, entry_id: int) -> bytes | None:
        rows = self.db.read("SELECT thumbnail FROM memory WHERE id = ?", (entry_id,))
        return rows[0][0] if rows else None

    def key(self, entry_id: int) -> np.ndarray:
        rows = self.db.read("SELECT key FROM memory WHERE id = ?", (entry_id,))
        if not rows:
            raise KeyError(f"no memory entry {entry_id}")
        return from_blob(rows[0][0])

    @property
    def index_kind(self) -> str:
        return self._index.kind
