"""The agent's database: one SQLite file per agent home (`HOME/agent.db`).

Tasks, episodes, their steps, episodic-memory entries and the tool library all live here, so a
crash can lose at most what was not yet committed. The file runs in WAL mode (a reader in another
process, such as the panel, never blocks the agent's writes), with foreign keys on and a busy
timeout. Every write is one `BEGIN IMMEDIATE ... COMMIT` transaction; when a write call returns, its
data survives the process being killed.

The schema is versioned with `PRAGMA user_version` and upgraded by the forward migrations in
`MIGRATIONS`; a file written by a newer Squirrel is refused with a `UserError`.

Threads: one connection per `AgentDB`, guarded by a lock, so a background thread (tool mining)
can share it with the acting thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from squirrel.errors import UserError

DB_NAME = "agent.db"
APPLICATION_ID = 0x53717231  # "Sqr1": marks the file as a Squirrel agent database
MAX_THUMBNAIL_BYTES = 16384  # thumbnails are for people; a full frame must never end up here

SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tasks (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE episodes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seed        INTEGER,
    instruction TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'success', 'failure', 'aborted')),
    ret         REAL,
    steps       INTEGER,
    started     REAL NOT NULL,
    ended       REAL
);
CREATE INDEX episodes_task ON episodes(task_id, started);
CREATE INDEX episodes_started ON episodes(started);
CREATE TABLE steps (
    episode_id    INTEGER NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    action        TEXT NOT NULL,
    reward        REAL NOT NULL DEFAULT 0,
    embedding_ids TEXT NOT NULL DEFAULT '[]',
    target        BLOB,
    thumbnail     BLOB,
    PRIMARY KEY (episode_id, idx)
) WITHOUT ROWID;
CREATE TABLE memory (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    episode_id INTEGER REFERENCES episodes(id) ON DELETE SET NULL,
    step       INTEGER,
    key        BLOB NOT NULL,
    action     TEXT NOT NULL,
    target     BLOB,
    ret        REAL NOT NULL,
    success    INTEGER NOT NULL,
    thumbnail  BLOB,
    created    REAL NOT NULL,
    uses       INTEGER NOT NULL DEFAULT 0,
    last_used  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX memory_task ON memory(task_id);
CREATE INDEX memory_created ON memory(created);
CREATE TABLE tools (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    renamed     INTEGER NOT NULL DEFAULT 0,
    signature   TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL DEFAULT 'candidate' CHECK (status IN ('candidate', 'active', 'pruned')),
    params      TEXT NOT NULL DEFAULT '[]',
    support     INTEGER NOT NULL DEFAULT 0,
    calls       INTEGER NOT NULL DEFAULT 0,
    successes   INTEGER NOT NULL DEFAULT 0,
    fail_streak INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    last_used   REAL
);
CREATE TABLE tool_steps (
    tool_id   INTEGER NOT NULL REFERENCES tools(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    key       TEXT,
    span      TEXT,
    target    BLOB,
    thumbnail BLOB,
    offset    TEXT,
    label     TEXT,
    PRIMARY KEY (tool_id, idx)
) WITHOUT ROWID;
-- Source episodes stay on record even after the episodes themselves are purged (no foreign key).
CREATE TABLE tool_sources (
    tool_id    INTEGER NOT NULL REFERENCES tools(id) ON DELETE CASCADE,
    episode_id INTEGER NOT NULL,
    PRIMARY KEY (tool_id, episode_id)
) WITHOUT ROWID;
-- Appearance clusters of acted-on targets: a click's target becomes a token by the cluster it joins.
CREATE TABLE tool_targets (
    id        INTEGER PRIMARY KEY,
    centroid  BLOB NOT NULL,
    count     INTEGER NOT NULL,
    label     TEXT,
    thumbnail BLOB
);
-- Successful episodes already turned into tokens for mining (mine_new picks up the rest).
CREATE TABLE mined (
    episode_id INTEGER PRIMARY KEY REFERENCES episodes(id) ON DELETE CASCADE,
    tokens     TEXT NOT NULL
);
"""


def _v1(conn: sqlite3.Connection) -> None:
    for stmt in SCHEMA_V1.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _v2(conn: sqlite3.Connection) -> None:
    """Episodes get a `source` (the agent, or a person's demonstration: was an instruction prefix) and a
    `pending` outcome (waiting for a person's verdict). SQLite cannot change a CHECK in place, so the table
    is rebuilt (foreign keys are off during migrations; `_migrate` checks them before committing)."""
    conn.execute("""
CREATE TABLE episodes_v2 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seed        INTEGER,
    instruction TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'pending', 'success', 'failure', 'aborted')),
    source      TEXT NOT NULL DEFAULT 'agent' CHECK (source IN ('agent', 'person')),
    ret         REAL,
    steps       INTEGER,
    started     REAL NOT NULL,
    ended       REAL
)""")
    prefix = "[demonstration] "
    conn.execute("INSERT INTO episodes_v2(id, task_id, seed, instruction, outcome, source, ret, steps, started, ended) "
                 "SELECT id, task_id, seed, CASE WHEN substr(instruction, 1, ?1) = ?2 THEN substr(instruction, ?1 + 1) "
                 "ELSE instruction END, outcome, CASE WHEN substr(instruction, 1, ?1) = ?2 THEN 'person' ELSE 'agent' END, "
                 "ret, steps, started, ended FROM episodes", (len(prefix), prefix))
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'episodes'").fetchone()
    conn.execute("DROP TABLE episodes")
    conn.execute("ALTER TABLE episodes_v2 RENAME TO episodes")
    if seq is not None:  # ids are never reused, also across the rebuild
        conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'episodes'", (seq[0],))
    conn.execute("CREATE INDEX episodes_task ON episodes(task_id, started)")
    conn.execute("CREATE INDEX episodes_started ON episodes(started)")


# MIGRATIONS[i] upgrades schema version i to i + 1, inside one transaction. Only ever append.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]


def schema_version() -> int:
    """The schema version this code writes."""
    return len(MIGRATIONS)


@dataclass(frozen=True)
class Episode:
    id: int
    task: str
    seed: int | None
    instruction: str
    outcome: str  # running | pending (a person's verdict) | success | failure | aborted
    ret: float | None
    steps: int | None
    started: float
    ended: float | None
    source: str = "agent"  # agent | person (a demonstration)

    @property
    def success(self) -> bool | None:
        return None if self.outcome in ("running", "pending", "aborted") else self.outcome == "success"


@dataclass(frozen=True)
class Step:
    episode_id: int
    index: int
    action: dict
    reward: float
    embedding_ids: list
    target: np.ndarray | None
    thumbnail: bytes | None


def to_blob(v: np.ndarray | None) -> bytes | None:
    return None if v is None else np.ascontiguousarray(v, dtype=np.float32).tobytes()


def from_blob(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype=np.float32).copy()


def check_thumbnail(thumb: bytes | None) -> bytes | None:
    if thumb is not None and len(thumb) > MAX_THUMBNAIL_BYTES:
        raise ValueError(f"thumbnail of {len(thumb)} bytes; at most {MAX_THUMBNAIL_BYTES} (store a small crop, never a frame)")
    return None if thumb is None else bytes(thumb)


def as_timestamp(t: float | datetime | None) -> float | None:
    return t.timestamp() if isinstance(t, datetime) else (None if t is None else float(t))


def _is_locked(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


class AgentDB:
    """One agent home's SQLite database. Open with `AgentDB.open(home)`; close (or use `with`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool, timeout: float):
        self._conn = conn
        self.path = path
        self.home = path.parent
        self.readonly = readonly
        self.timeout = timeout
        self.lock = threading.RLock()
        self._depth = 0
        self._task_ids: dict[str, int] = {}

    # ---------------------------------------------------------------- opening and transactions
    @classmethod
    def open(cls, home: str | Path, *, readonly: bool = False, timeout: float = 10.0,
             synchronous: str = "NORMAL") -> AgentDB:
        """Open (creating and migrating if needed) `home/agent.db`.

        `readonly`: for a second process such as the panel; never writes, never migrates.
        `synchronous`: NORMAL survives a killed process (WAL); FULL also survives power loss.
        """
        home = Path(home).expanduser()
        path = home / DB_NAME
        if readonly and not path.exists():
            raise UserError(f"no agent database at {path}: run the agent with this home first")
        if not readonly:
            home.mkdir(parents=True, exist_ok=True)
        try:
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise UserError(f"cannot open {path}: {e}; check the folder exists and is writable") from e
        db = cls(conn, path, readonly, timeout)
        try:
            db._setup(synchronous)
        except sqlite3.DatabaseError as e:
            conn.close()
            if _is_locked(e):
                raise UserError(f"{path} is locked by another process (waited {timeout:g} s): stop the other "
                                "Squirrel process using this home, or choose another home") from e
            raise UserError(f"{path} is corrupt or not an SQLite database ({e}): move it aside and start "
                            "with a fresh home, or restore it from a backup") from e
        except BaseException:
            conn.close()
            raise
        return db

    def _setup(self, synchronous: str) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        c.execute("PRAGMA foreign_keys = ON")
        if not self.readonly:
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch to WAL (journal mode {mode}); database is locked")
            c.execute(f"PRAGMA synchronous = {synchronous}")
        version = c.execute("PRAGMA user_version").fetchone()[0]
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        n_tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or n_tables):
            raise UserError(f"{self.path} is an SQLite file but not a Squirrel agent database: "
                            "choose another home, or move the file aside")
        if version > schema_version():
            raise UserError(f"{self.path} was written by a newer Squirrel (schema v{version}, this one knows up to "
                            f"v{schema_version()}): upgrade Squirrel, or use another home")
        if version < schema_version():
            if self.readonly:
                raise UserError(f"{self.path} has an older schema (v{version}): open it once with the agent to upgrade it")
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        # Foreign keys off while tables are rebuilt (a DROP would cascade into the steps), checked before each
        # commit instead; the pragma is a no-op inside a transaction, so it is set around them.
        self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            for v in range(version, schema_version()):
                with self.transaction() as c:
                    if c.execute("PRAGMA user_version").fetchone()[0] != v:  # another process migrated meanwhile
                        continue
                    MIGRATIONS[v](c)
                    bad = c.execute("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise sqlite3.IntegrityError(f"migration to schema v{v + 1} broke {len(bad)} references")
                    c.execute(f"PRAGMA user_version = {v + 1}")
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT; ROLLBACK on error). Nests."""
        if self.readonly:
            raise RuntimeError("this AgentDB was opened read-only")
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_locked(e):
                    raise UserError(f"{self.path} is locked by another process (waited {self.timeout:g} s): stop the "
                                    "other Squirrel process writing to this home") from e
                raise
            self._depth = 1
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: the reads inside it (from this thread) all see one state of the database."""
        with self.lock:
            if self._depth:  # inside a write transaction: already consistent
                yield
                return
            self._conn.execute("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    def read(self, sql: str, params: Sequence | dict = ()) -> list[tuple]:
        """Run a query and return all its rows (a consistent snapshot)."""
        with self.lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:
                if _is_locked(e):
                    raise UserError(f"{self.path} is locked by another process: stop it, or retry") from e
                raise

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                if not self.readonly:
                    try:
                        self._conn.execute("PRAGMA optimize")
                    except sqlite3.Error:
                        pass
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> AgentDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, str(value)))

    def bump_counter(self, c: sqlite3.Connection, key: str) -> int:
        """Increment an integer meta counter inside the caller's transaction; returns the new value."""
        return c.execute("INSERT INTO meta(key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE SET "
                         "value = CAST(value AS INTEGER) + 1 RETURNING CAST(value AS INTEGER)", (key,)).fetchone()[0]

    # ---------------------------------------------------------------- tasks
    def task_id(self, name: str, create: bool = True) -> int | None:
        """The id of a task by name (created on first use unless `create` is False)."""
        if name in self._task_ids:
            return self._task_ids[name]
        rows = self.read("SELECT id FROM tasks WHERE name = ?", (name,))
        if not rows:
            if not create:
                return None
            with self.transaction() as c:
                c.execute("INSERT OR IGNORE INTO tasks(name, created) VALUES (?, ?)", (name, time.time()))
                rows = c.execute("SELECT id FROM tasks WHERE name = ?", (name,)).fetchall()
        self._task_ids[name] = rows[0][0]
        return rows[0][0]

    def tasks(self) -> list[str]:
        return [r[0] for r in self.read("SELECT name FROM tasks ORDER BY id")]

    # ---------------------------------------------------------------- episodes and steps
    def begin_episode(self, task: str, seed: int | None, instruction: str, source: str = "agent") -> int:
        """Record the start of an episode acted by `source` ("agent", or "person": a demonstration); returns
        its id (committed)."""
        tid = self.task_id(task)
        with self.transaction() as c:
            return c.execute("INSERT INTO episodes(task_id, seed, instruction, source, started) VALUES (?, ?, ?, ?, ?)",
                             (tid, seed, instruction, source, time.time())).lastrowid

    def add_step(self, episode_id: int, index: int, action: dict, reward: float = 0.0,
                 embedding_ids: Sequence[int] = (), target: np.ndarray | None = None,
                 thumbnail: bytes | None = None) -> None:
        """Record one step (committed). `action` is JSON-able; for tool mining it carries "kind" (the action
        type) and, as they apply, "key", "span" [start, end], "offset" [dx, dy] and "label". `target` is the
        embedding of the acted-on patch; `thumbnail` an optional small crop of it."""
        with self.transaction() as c:
            c.execute("INSERT INTO steps(episode_id, idx, action, reward, embedding_ids, target, thumbnail) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (episode_id, index, json.dumps(action), float(reward), json.dumps([int(i) for i in embedding_ids]),
                       to_blob(target), check_thumbnail(thumbnail)))

    def end_episode(self, episode_id: int, success: bool | None, ret: float, steps: int) -> None:
        """Record the outcome (committed); None: pending, the outcome is a person's to give (a later call)."""
        outcome = "pending" if success is None else "success" if success else "failure"
        with self.transaction() as c:
            n = c.execute("UPDATE episodes SET outcome = ?, ret = ?, steps = ?, ended = ? WHERE id = ?",
                          (outcome, float(ret), int(steps), time.time(), episode_id)).rowcount
        if n != 1:
            raise KeyError(f"no episode {episode_id}")

    def abandon_unfinished(self, older_than: float = 0.0) -> int:
        """Mark episodes that never ended (left by a killed process) as aborted; returns how many.
        Call it when resuming, before starting new episodes; `older_than` spares ones started recently."""
        with self.transaction() as c:
            return c.execute("UPDATE episodes SET outcome = 'aborted' WHERE outcome = 'running' AND started <= ?",
                             (time.time() - older_than,)).rowcount

    _EPISODE_SQL = ("SELECT e.id, t.name, e.seed, e.instruction, e.outcome, e.ret, e.steps, e.started, e.ended, e.source "
                    "FROM episodes e JOIN tasks t ON t.id = e.task_id")

    def episodes(self, task: str | None = None, *, outcome: str | None = None, limit: int | None = None) -> list[Episode]:
        """Episodes in order of id, optionally of one task and/or one outcome; `limit` keeps the latest."""
        where, params = [], []
        if task is not None:
            where.append("t.name = ?")
            params.append(task)
        if outcome is not None:
            where.append("e.outcome = ?")
            params.append(outcome)
        sql = self._EPISODE_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Episode(*r) for r in reversed(self.read(sql, params))]

    def episode(self, episode_id: int) -> Episode:
        rows = self.read(self._EPISODE_SQL + " WHERE e.id = ?", (episode_id,))
        if not rows:
            raise KeyError(f"no episode {episode_id}")
        return Episode(*rows[0])

    def steps(self, episode_id: int) -> list[Step]:
        rows = self.read("SELECT episode_id, idx, action, reward, embedding_ids, target, thumbnail FROM steps "
                         "WHERE episode_id = ? ORDER BY idx", (episode_id,))
        return [Step(r[0], r[1], json.loads(r[2]), r[3], json.loads(r[4]), from_blob(r[5]), r[6]) for r in rows]

    # ---------------------------------------------------------------- retention
    def used_bytes(self) -> int:
        """Bytes of the database file in use (freed pages are reused before the file grows)."""
        (pc,), (fl,), (ps,) = (self.read(f"PRAGMA {p}")[0] for p in ("page_count", "freelist_count", "page_size"))
        return (pc - fl) * ps

    def trim(self, max_bytes: int, batch: int = 200) -> int:
        """Delete the oldest decided episodes (with their steps) while the database uses more than `max_bytes`;
        returns how many. Running and pending episodes, episodic memory entries and tools stay. The file keeps
        its size and reuses the freed pages, so it stops growing at about the budget."""
        removed = 0
        while self.used_bytes() > max_bytes:
            ids = [r[0] for r in self.read("SELECT id FROM episodes WHERE outcome IN ('success', 'failure', 'aborted') "
                                           "ORDER BY id LIMIT ?", (batch,))]
            if not ids:
                break
            with self.transaction() as c:
                c.execute(f"DELETE FROM episodes WHERE id IN ({','.join('?' * len(ids))})", ids)
            removed += len(ids)
        return removed

    def purge(self, task: str | None = None, before: float | datetime | None = None, *, vacuum: bool = True) -> dict:
        """Delete episodes (with their steps) and memory entries of `task` and/or started/created before
        `before` (unix time or datetime); both None deletes all of them. Tools stay on record. Then VACUUM,
        so deleted data (thumbnails) is really gone from the file. Returns the counts deleted."""
        before = as_timestamp(before)
        where_e, where_m, params = [], [], []
        if task is not None:
            where_e.append("task_id = (SELECT id FROM tasks WHERE name = ?)")
            where_m.append("task_id = (SELECT id FROM tasks WHERE name = ?)")
            params.append(task)
        if before is not None:
            where_e.append("started < ?")
            where_m.append("created < ?")
            params.append(before)
        we = " WHERE " + " AND ".join(where_e) if where_e else ""
        wm = " WHERE " + " AND ".join(where_m) if where_m else ""
        with self.transaction() as c:
            n_mem = c.execute("DELETE FROM memory" + wm, params).rowcount
            n_ep = c.execute("DELETE FROM episodes" + we, params).rowcount
            if n_mem:
                gen = self.bump_counter(c, "memory_generation")
                c.execute("INSERT INTO meta(key, value) VALUES ('memory_removal_generation', ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(gen),))
        if vacuum:
            self.vacuum()
        return {"episodes": n_ep, "memory": n_mem}

    def vacuum(self) -> None:
        with self.lock:
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def integrity_check(self) -> str:
        """'ok', or SQLite's description of what is wrong."""
        return "\n".join(r[0] for r in self.read("PRAGMA integrity_check"))

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
