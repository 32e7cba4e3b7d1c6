"""kNN over L2-normalised float32 keys by inner product (= cosine), with int64 ids, on faiss.

Which index, by measurement on this CPU (2 cores, 512-d keys, one query at a time, one thread;
`squirrel bench memory` reproduces the figures):

- up to `exact_limit` keys (default 20,000): exact search, `IndexIDMap2(IndexFlatIP)`; a query
  scans ~40 MB at most, ~1-2 ms. Results equal brute force.
- beyond: an inverted file with an HNSW coarse quantizer and uncompressed vectors
  (`IVF{nlist}_HNSW32,Flat`, inner product), nlist = 2·sqrt(n) rounded to a power of two, trained
  by k-means on up to 32·nlist keys, searching `nprobe` lists. It supports removal by id (eviction),
  trains in seconds at 1M keys, and answers in about a millisecond at 1M. It is approximate: after
  each build, `nprobe` is tuned on the keys themselves (the smallest of 8, 16, ... 256 reaching
  recall@10 >= 0.95 against exact search, from 100 stored keys as queries); the bench reports the
  recall of fresh queries against brute force.

HNSW alone (faster queries) was rejected: faiss's HNSW cannot remove ids, and it takes minutes to
build at 1M 512-d keys on two cores.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

EXACT_LIMIT = 20_000
NPROBE = 16  # IVF lists searched when not tuned
NPROBES = (8, 16, 32, 64, 128, 256)  # candidates for tune_nprobe, cheapest first
RECALL_TARGET = 0.95
SMALL = 256  # batches below this run on one OpenMP thread (see _one_thread)


@contextmanager
def _one_thread(n: int):
    """Run a small faiss operation on one thread. faiss's OpenMP workers spin while they wait; on a
    busy 2-core machine (the encoder, other processes) a single query or insert then takes 5-10x
    longer than on one thread. Large batches (training, bulk adds) keep all threads."""
    import faiss

    old = faiss.omp_get_max_threads()
    if n >= SMALL or old == 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous). Zero rows raise ValueError."""
    x = np.array(x, dtype=np.float32, copy=True, ndmin=2, order="C")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(n > 0) or not np.all(np.isfinite(n)):
        raise ValueError("keys must be finite and non-zero")
    x /= n
    return x


def nlist_for(n: int) -> int:
    """Number of IVF lists for n keys: 2·sqrt(n) rounded to a power of two, within [64, 16384]."""
    return int(min(16384, max(64, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))))


class KeyIndex:
    """A faiss index over normalised keys with int64 ids: exact (flat) or IVF (see module doc)."""

    def __init__(self, dim: int, faiss_index=None, *, nprobe: int | None = None, trained_on: int = 0):
        import faiss

        self.dim = dim
        self.trained_on = trained_on  # how many keys the IVF was sized for (0: exact)
        self.index = faiss_index if faiss_index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if nprobe is None:  # keep what the (loaded) index carries
            nprobe = faiss.extract_index_ivf(self.index).nprobe if self.is_ivf else NPROBE
        self.nprobe = int(nprobe)
        self.recall_estimate: float | None = None if self.is_ivf else 1.0
        self._apply_nprobe()

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, dim: int, ids: np.ndarray, keys: np.ndarray, *, exact_limit: int = EXACT_LIMIT,
              nprobe: int | None = None, recall_target: float = RECALL_TARGET, seed: int = 0,
              progress=None) -> KeyIndex:
        """An index holding `keys` (already normalised) under `ids`, of the kind their number calls for.
        `nprobe` None: tuned on the keys themselves (`tune_nprobe`). `progress(done, total)` is called
        while adding, for long builds."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(ids)
        if n <= exact_limit:
            index = cls(dim, nprobe=NPROBE)
        else:
            index = cls.trained_ivf(dim, keys, nprobe=nprobe or NPROBE, seed=seed)
        step = 100_000
        for i in range(0, n, step):
            index.add(ids[i:i + step], keys[i:i + step])
            if progress is not None:
                progress(min(n, i + step), n)
        if index.is_ivf and nprobe is None:
            index.tune_nprobe(ids, keys, target=recall_target, seed=seed)
        return index

    @classmethod
    def trained_ivf(cls, dim: int, sample: np.ndarray, *, nprobe: int = NPROBE, seed: int = 0) -> KeyIndex:
        """An empty IVF index sized for len(sample) keys, trained on (a subsample of) them."""
        import faiss

        n = len(sample)
        nlist = nlist_for(n)
        ivf = faiss.index_factory(dim, f"IVF{nlist}_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 32
        ivf.cp.min_points_per_centroid = 1
        take = min(n, 32 * nlist)
        rows = np.sort(np.random.default_rng(seed).choice(n, take, replace=False)) if take < n else slice(None)
        ivf.train(np.ascontiguousarray(sample[rows], dtype=np.float32))
        return cls(dim, ivf, nprobe=nprobe, trained_on=n)

    def tune_nprobe(self, ids: np.ndarray, keys: np.ndarray, *, target: float = RECALL_TARGET, k: int = 10,
                    samples: int = 100, seed: int = 0) -> float:
        """Pick the smallest nprobe in NPROBES whose recall@k reaches `target`, measured against exact
        search for `samples` of the indexed keys used as queries (each one's own entry left out).
        Keeps the largest if none does. Returns the recall measured at the chosen nprobe."""
        if not self.is_ivf:
            return 1.0
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(ids), min(samples, len(ids)), replace=False)
        q = np.ascontiguousarray(keys[pick], dtype=np.float32)
        best = np.full((len(q), k + 1), -np.inf, np.float32)
        best_i = np.zeros((len(q), k + 1), np.int64)
        for i in range(0, len(keys), 200_000):  # exact top-(k+1), blockwise
            s = q @ keys[i:i + 200_000].T
            j = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k + 1]
            cand_s = np.concatenate([best, np.take_along_axis(s, j, 1)], 1)
            cand_i = np.concatenate([best_i, j + i], 1)
            o = np.argsort(-cand_s, axis=1)[:, :k + 1]
            best, best_i = np.take_along_axis(cand_s, o, 1), np.take_along_axis(cand_i, o, 1)
        truth = [set(ids[row].tolist()) - {ids[p]} for row, p in zip(best_i, pick)]
        recall = 0.0
        for nprobe in NPROBES:
            self.nprobe = nprobe
            self._apply_nprobe()
            _, got = self.search(q, k + 1)
            recall = float(np.mean([len((set(g.tolist()) - {ids[p]}) & t) / max(1, len(t))
                                    for g, t, p in zip(got, truth, pick)]))
            if recall >= target:
                break
        self.recall_estimate = recall
        return recall

    def _apply_nprobe(self) -> None:
        import faiss

        if self.is_ivf:
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = self.nprobe
            q = faiss.downcast_index(ivf.quantizer)
            if hasattr(q, "hnsw"):
                q.hnsw.efSearch = max(64, 2 * self.nprobe)

    # ---------------------------------------------------------------- use
    @property
    def is_ivf(self) -> bool:
        return self.trained_on > 0

    @property
    def kind(self) -> str:
        if not self.is_ivf:
            return "flat"
        import faiss

        return f"IVF{faiss.extract_index_ivf(self.index).nlist}_HNSW32,Flat"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, keys: np.ndarray) -> None:
        if len(ids):
            with _one_thread(len(ids)):
                self.index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim),
                                        np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids) -> int:
        ids = np.ascontiguousarray(list(ids), dtype=np.int64)
        if not len(ids):
            return 0
        with _one_thread(len(ids)):
            return int(self.index.remove_ids(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (nq, k), best first; missing neighbours have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with _one_thread(len(q)):
            return self.index.search(q, k)

    def wants_rebuild(self, exact_limit: int = EXACT_LIMIT) -> bool:
        """True when the number of keys has outgrown (or shrunk well below) what this index was sized for."""
        n = len(self)
        if not self.is_ivf:
            return n > exact_limit
        return n > 4 * self.trained_on or n < exact_limit // 2

    # ---------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write atomically: a temporary file, fsync, rename."""
        import faiss

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, *, trained_on: int | None = None, nprobe: int | None = None) -> KeyIndex:
        """Read an index written by `save`; `trained_on` as it was when saved (else estimated from nlist)."""
        import faiss

        index = faiss.read_index(str(path))
        try:
            nlist = faiss.extract_index_ivf(index).nlist
        except RuntimeError:
            return cls(index.d, index, nprobe=nprobe, trained_on=0)
        return cls(index.d, index, nprobe=nprobe, trained_on=max(1, trained_on or (nlist // 2) ** 2))
