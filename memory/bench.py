"""`squirrel bench memory`: episodic-memory kNN latency, insert throughput and database size.

Target (issue 5): kNN query under 2 ms median at 1M entries of the real key size on this CPU, with
brute-force numpy beside it as the baseline. Keys are 512-d by default: the screen encoder's pooled
state vector (128) concatenated with the 384-d MiniLM goal embedding, L2-normalised.

The keys are synthetic but shaped like the agent's: 1,000 instructions whose embeddings repeat
exactly (they are cached per instruction) and fall into 50 families of related wordings; each
instruction has 20 screens, and a state is one of its screens plus noise (cosine ~0.85 to it).
Queries are fresh draws from the same model. Recall@k is measured against exact brute force on the
same keys. A second, structureless set (`--stress-size`: a 16-d Gaussian embedded linearly, no
clusters) shows the hard case for an inverted file: nprobe tuning then has to search many more
lists for the same recall. (Uniformly random 512-d keys have no meaningful neighbours at all.)

Queries run on one thread, brute force too (numpy einsum, which uses no BLAS thread pool): on a
busy 2-core machine, thread pools that spin while waiting make single queries 10-100x slower.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory.index import EXACT_LIMIT, RECALL_TARGET, KeyIndex, normalise
from squirrel.config import parse

GOAL_DIM = 384


@dataclass
class MemoryBenchConfig:
    """Measure episodic-memory kNN latency, insert throughput and database size on this machine."""

    json: str = ""
    """Write the results to this JSON file (nothing is written when empty)."""
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Numbers of memory entries to measure query latency at."""
    key_dim: int = 512
    """Key size: state embedding (key_dim - 384) plus the 384-d goal embedding."""
    target_dim: int = 192
    """Size of the stored target (clicked-patch) embedding, for the insert and size figures."""
    k: int = 10
    """Neighbours per query."""
    queries: int = 500
    """Timed single-key queries per size."""
    brute_queries: int = 20
    """Timed brute-force numpy queries per size."""
    recall_queries: int = 200
    """Queries whose results are checked against brute force (recall@k)."""
    nprobe: int | None = None
    """IVF lists searched per query. None: tuned at build time, as the memory does."""
    stress_size: int = 100_000
    """Also measure recall on structureless keys (low intrinsic dimension, no clusters) at this size; 0 skips."""
    exact_limit: int = EXACT_LIMIT
    """Up to this many entries the index is exact (flat); beyond, IVF."""
    threads: int = 1
    """faiss threads for queries (the agent queries from one thread)."""
    build_threads: int = 2
    """faiss threads for training and adding."""
    inserts: int = 2000
    """Entries inserted one by one (each committed) for the insert-throughput figure."""
    episodes: int = 1000
    """Episodes written for the database-size figure."""
    steps_per_episode: int = 10
    """Steps per episode for the database-size figure (one memory entry per step)."""
    seed: int = 0
    """Random seed for the synthetic keys."""


class KeyModel:
    """Synthetic (state, goal) keys shaped like the agent's (see the module docstring)."""

    def __init__(self, key_dim: int, seed: int, goals: int = 1000, families: int = 50, screens_per_goal: int = 20):
        self.rng = np.random.default_rng(seed)
        self.goal_dim = GOAL_DIM if key_dim > GOAL_DIM else key_dim // 2
        self.state_dim = key_dim - self.goal_dim
        fam = self.rng.standard_normal((families, self.goal_dim), dtype=np.float32)
        g = fam[np.arange(goals) * families // goals] + 0.8 * self.rng.standard_normal((goals, self.goal_dim), dtype=np.float32)
        self.goals = g / np.linalg.norm(g, axis=1, keepdims=True)
        self.screens = self.rng.standard_normal((goals, screens_per_goal, self.state_dim), dtype=np.float32)

    def sample(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((n, self.state_dim + self.goal_dim), np.float32) if out is None else out
        for i in range(0, n, 100_000):
            m = min(100_000, n - i)
            gi = self.rng.integers(0, len(self.goals), m)
            s = self.screens[gi, self.rng.integers(0, self.screens.shape[1], m)]
            s += 0.6 * self.rng.standard_normal(s.shape, dtype=np.float32)
            s /= np.linalg.norm(s, axis=1, keepdims=True)
            out[i:i + m, :self.state_dim] = s * np.float32(np.sqrt(0.5))
            out[i:i + m, self.state_dim:] = self.goals[gi] * np.float32(np.sqrt(0.5))
        return out


def _ms(ts: list[float]) -> tuple[float, float]:
    a = np.array(ts) * 1e3
    return round(float(np.median(a)), 4), round(float(np.percentile(a, 99)), 4)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _exact_topk(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for i in range(0, len(keys), 200_000):
        s = queries @ keys[i:i + 200_000].T
        j = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cs, ci = np.take_along_axis(s, j, 1), j + i
        all_s = np.concatenate([best_s, cs], 1)
        alli = np.concatenate([best_i, ci], 1)
        o = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, o, 1), np.take_along_axis(alli, o, 1)
    return best_i


def _recall(index: KeyIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    _, got = index.search(queries, k)
    return round(float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth)])), 4)


def _query_times(index: KeyIndex, queries: np.ndarray, k: int) -> list[float]:
    for q in queries[:20]:
        index.search(q[None], k)
    ts = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k)
        ts.append(time.perf_counter() - t)
    return ts


def _build_and_measure(cfg: MemoryBenchConfig, x: np.ndarray, queries: np.ndarray, label: str) -> dict:
    """Build the memory's index over keys x, then time queries, brute force, and recall against it."""
    import faiss

    n = len(x)
    faiss.omp_set_num_threads(cfg.build_threads)
    if n > cfg.exact_limit:
        _log(f"  {n:,}-entry index{label}: training IVF lists, adding keys, tuning nprobe ...")
    t = time.perf_counter()
    index = KeyIndex.build(cfg.key_dim, np.arange(n), x, exact_limit=cfg.exact_limit, nprobe=cfg.nprobe, seed=cfg.seed,
                           progress=(lambda d, tot: _log(f"  {n:,}-entry index{label}: added {d:,}/{tot:,}"))
                           if n >= 200_000 else None)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(cfg.threads)
    med, p99 = _ms(_query_times(index, queries[:cfg.queries], cfg.k))
    bts = []
    for q in queries[:cfg.brute_queries]:
        t = time.perf_counter()
        s = np.einsum("ij,j->i", x, q)  # one thread, like the index queries (BLAS threads spin when cores are busy)
        top = np.argpartition(-s, cfg.k)[:cfg.k]
        top[np.argsort(-s[top])]
        bts.append(time.perf_counter() - t)
    truth = _exact_topk(x, queries[:cfg.recall_queries], cfg.k)
    rk = f"recall_at_{cfg.k}"
    row = {"query_ms_median": med, "query_ms_p99": p99, "brute_ms_median": _ms(bts)[0],
           rk: _recall(index, queries[:cfg.recall_queries], truth, cfg.k), "index": index.kind,
           "nprobe": index.nprobe if index.is_ivf else None, "build_s": round(build_s, 2)}
    if index.is_ivf:  # recall and speed at each nprobe: the measurement behind the choice
        row["nprobe_tuning_recall"] = round(index.recall_estimate, 4) if index.recall_estimate is not None else None
        chosen, sweep = index.nprobe, {}
        for nprobe in (4, 8, 16, 32, 64, 128):
            index.nprobe = nprobe
            index._apply_nprobe()
            sweep[str(nprobe)] = {"query_ms_median": _ms(_query_times(index, queries[:200], cfg.k))[0],
                                  rk: _recall(index, queries[:cfg.recall_queries], truth, cfg.k)}
        row["nprobe_sweep"] = sweep
        index.nprobe = chosen
    _log(f"  {n:>9,} entries{label}  {row['index']:<20} nprobe {row['nprobe']}  query {med:.3f} ms median, "
         f"{p99:.3f} p99;  brute force {row['brute_ms_median']:.2f} ms;  recall@{cfg.k} {row[rk]:.3f};  "
         f"built in {build_s:.1f} s")
    return row


def bench_sizes(cfg: MemoryBenchConfig) -> dict:
    sizes = sorted(cfg.sizes)
    model = KeyModel(cfg.key_dim, cfg.seed)
    _log(f"generating {sizes[-1]:,} synthetic {cfg.key_dim}-d keys ...")
    keys = model.sample(sizes[-1])
    queries = model.sample(max(cfg.queries, cfg.recall_queries))
    return {str(n): _build_and_measure(cfg, keys[:n], queries, "") for n in sizes}


def bench_stress(cfg: MemoryBenchConfig) -> dict:
    """Structureless keys: a 16-d Gaussian mapped linearly into key_dim, plus noise; no clusters at all."""
    rng = np.random.default_rng(cfg.seed + 2)
    a = rng.standard_normal((16, cfg.key_dim)).astype(np.float32) / 4

    def sample(m):
        z = rng.standard_normal((m, 16)).astype(np.float32)
        return normalise(z @ a + 0.3 * rng.standard_normal((m, cfg.key_dim)).astype(np.float32) / np.sqrt(cfg.key_dim))

    _log(f"structureless keys ({cfg.stress_size:,}): the hard case for an inverted file")
    row = _build_and_measure(cfg, sample(cfg.stress_size), sample(max(cfg.queries, cfg.recall_queries)), " (stress)")
    row["data"] = "structureless: 16-d Gaussian linearly embedded in the key space, plus noise"
    return row


def bench_writes(cfg: MemoryBenchConfig) -> dict:
    """Insert throughput of EpisodicMemory.add, and database bytes per 1,000 episodes as the agent writes them."""
    from memory.db import AgentDB
    from memory.episodic import EpisodicMemory

    model = KeyModel(cfg.key_dim, cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed)
    res = {}
    with tempfile.TemporaryDirectory(prefix="squirrel-bench-memory-") as tmp:
        with AgentDB.open(Path(tmp) / "inserts") as db:
            mem = EpisodicMemory(db, cfg.key_dim, capacity=10 * cfg.inserts, per_task_quota=10 * cfg.inserts,
                                 exact_limit=cfg.exact_limit, nprobe=cfg.nprobe)
            keys = model.sample(cfg.inserts)
            targets = rng.standard_normal((cfg.inserts, cfg.target_dim)).astype(np.float32)
            t = time.perf_counter()
            for i in range(cfg.inserts):
                mem.add(f"task{i % 10}", keys[i], {"kind": "click", "patch": int(i % 130), "offset": [0.5, 0.5]},
                        targets[i], 0.9, i % 3 == 0)
            res["insert_per_s"] = round(cfg.inserts / (time.perf_counter() - t), 1)
            import faiss

            faiss.omp_set_num_threads(cfg.threads)
            ts = []
            for q in model.sample(200):
                t = time.perf_counter()
                mem.query(q, cfg.k)
                ts.append(time.perf_counter() - t)
            res["memory_query_ms_median"] = _ms(ts)[0]  # end to end: index + rows from SQLite
            _log(f"  insert: {res['insert_per_s']:,.0f} entries/s (each committed, {cfg.key_dim}-d key, "
                 f"{cfg.target_dim}-d target); EpisodicMemory.query at {cfg.inserts:,} entries, end to end: "
                 f"{res['memory_query_ms_median']:.3f} ms median")
        for thumbs in (False, True):
            with AgentDB.open(Path(tmp) / f"size{int(thumbs)}") as db:
                mem = EpisodicMemory(db, cfg.key_dim, capacity=10 ** 9, per_task_quota=10 ** 9,
                                     exact_limit=cfg.exact_limit, nprobe=cfg.nprobe)
                n = cfg.steps_per_episode
                for e in range(cfg.episodes):
                    task = f"task{e % 20}"
                    eid = db.begin_episode(task, e, "type the word shown in the box and press Enter")
                    targets = rng.standard_normal((n, cfg.target_dim)).astype(np.float32)
                    thumb = bytes(rng.integers(0, 256, 2048, dtype=np.uint8)) if thumbs else None
                    for i in range(n):
                        db.add_step(eid, i, {"kind": "click", "patch": int(rng.integers(130)), "offset": [0.25, 0.75]},
                                    reward=0.0, embedding_ids=[eid * n + i], target=targets[i], thumbnail=thumb)
                    mem.add_many(task, model.sample(n), [{"kind": "click", "patch": 3, "offset": [0.25, 0.75]}] * n,
                                 list(targets), [0.99 ** (n - i) for i in range(n)], [e % 2 == 0] * n, [thumb] * n,
                                 episode_id=eid, steps=list(range(n)))
                    db.end_episode(eid, e % 2 == 0, float(e % 2 == 0), n)
                db.vacuum()
                per_1000 = round(db.size_bytes() * 1000 / cfg.episodes)
            res["db_bytes_per_1000_episodes" + ("_with_thumbnails" if thumbs else "")] = per_1000
            _log(f"  database: {per_1000 / 1e6:.1f} MB per 1,000 episodes of {n} steps"
                 + (" with 2 KB thumbnails" if thumbs else " (no thumbnails)"))
    return res


def main(argv: list[str], prog: str) -> int:
    import faiss

    cfg = parse(MemoryBenchConfig, argv, prog)
    t0 = time.perf_counter()
    result = {"sizes": bench_sizes(cfg)}
    if cfg.stress_size:
        result["stress"] = {str(cfg.stress_size): bench_stress(cfg)}
    faiss.omp_set_num_threads(cfg.build_threads)
    result.update(bench_writes(cfg))
    result.update({
        "key_dim": cfg.key_dim, "target_dim": cfg.target_dim, "k": cfg.k, "query_threads": cfg.threads,
        "steps_per_episode": cfg.steps_per_episode, "exact_limit": cfg.exact_limit, "recall_target": RECALL_TARGET,
        "data": "synthetic state+goal keys: 1000 repeated goal embeddings in 50 families, 20 screens per goal, "
                "state = screen + noise (cos ~0.85); queries from the same model",
        "faiss": faiss.__version__, "numpy": np.__version__, "cpu": _cpu(), "cores": os.cpu_count(),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    big = result["sizes"][str(max(cfg.sizes))]
    print(f"kNN at {max(cfg.sizes):,} entries: {big['query_ms_median']:.3f} ms median ({big['index']}, nprobe "
          f"{big['nprobe']}, recall@{cfg.k} {big[f'recall_at_{cfg.k}']:.3f}) vs brute force {big['brute_ms_median']:.1f} ms; "
          f"insert {result['insert_per_s']:,.0f}/s; {result['db_bytes_per_1000_episodes'] / 1e6:.1f} MB per 1,000 "
          f"episodes; {result['seconds']:.0f} s")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {cfg.json}")
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
