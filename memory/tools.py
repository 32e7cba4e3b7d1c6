"""The tool library: macros the agent mines from its own successful episodes.

A step is plain data (`ToolStep`; this package never imports the agent). Mining abstracts each step
into a token so that a sub-sequence transfers to new screens and instructions:

- an acted-on target (click, double/right click, drag, scroll) becomes the appearance cluster it
  joins (clusters persist in the database, so tokens stay stable across mining runs). Targets are
  either embeddings (`target_match="cosine"`: cosine similarity >= `target_similarity` to a cluster's
  mean) or pixel crops (`"crop"`, what the agent stores: a 24x48 colour crop around the point acted
  on, as 3456 floats 0..255; it joins a cluster when `crop_similarity` to the cluster's first crop is
  >= `target_similarity`: colour differences count, shifts of up to 12 px across and 8 px down do
  not, so two clicks on one button at different places are one target, and a crop stays valid
  however the agent's encoder changes);
- typed text becomes "a span of the instruction" (a parameter; the span is its default when every
  occurrence typed the same span), never the literal text;
- keys stay keys; "done" stays "done".

A token sequence of length 2..`max_len` is a tool candidate when it occurs in at least
`min_support` successful episodes and more often than chance allows: under a null of tokens drawn
independently with their observed frequencies -- or, if larger, of its prefix followed by (or its
suffix preceded by) a token at random -- the number of episodes containing it would be about
Poisson(E); it must have P(X >= support) < `alpha` / (number of sequences tested). The prefix and
suffix terms keep a real routine from dragging random neighbours into it. Of nested
candidates only the longest is kept unless a shorter one is clearly more frequent (closed
patterns). So random episodes yield nothing, and a planted routine is found whole.

Routines that differ only in where their first step acted are one routine whose first target is chosen
when it is called: "click the radio, then Submit" is mined once per option, and two or more such tools
(same kinds, same later steps) also give a point tool, token `click@*`, whose first step acts where the
caller points (a `ToolParam` of kind "point"), its support the sum of theirs. Only the first step: a
later target (a menu's item) is not on the screen yet when the caller decides.

Tools have a status: candidate (found), active (approved; offered to the policy), pruned (never
offered again and never re-created by mining, but kept on record). An active tool that fails
`demote_after` calls in a row goes back to candidate.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from memory.db import AgentDB, check_thumbnail, from_blob, to_blob

KINDS = ("click", "double_click", "right_click", "drag", "scroll_up", "scroll_down", "key", "type", "done")
TARGET_KINDS = frozenset(KINDS[:6])
STATUSES = ("candidate", "active", "pruned")
POINT = "@*"  # token suffix of a step that acts where the tool's caller points (no target of its own)


@dataclass
class ToolStep:
    """One step of an episode or of a tool, as plain data."""

    kind: str  # one of KINDS
    key: str | None = None  # for kind "key": the key or chord, e.g. "Enter", "ctrl+s"
    span: tuple[int, int] | None = None  # for kind "type": [start, end) over the instruction's tokens
    target: np.ndarray | None = None  # embedding of the patch acted on
    thumbnail: bytes | None = None  # small crop of it, for people
    offset: tuple[float, float] | None = None  # in-patch offset of the point acted on
    label: str | None = None  # optional human hint for the target (e.g. its text), used in names only

    @classmethod
    def from_action(cls, action: dict, target: np.ndarray | None = None, thumbnail: bytes | None = None) -> ToolStep:
        """From an action dict as stored in `steps.action` ("kind" or "type", "key", "span", "offset", "label")."""
        span, offset = action.get("span"), action.get("offset")
        return cls(kind=str(action.get("kind") or action.get("type") or ""), key=action.get("key"),
                   span=None if span is None else (int(span[0]), int(span[1])), target=target, thumbnail=thumbnail,
                   offset=None if offset is None else (float(offset[0]), float(offset[1])), label=action.get("label"))

    def describe(self, ref: str | None = None) -> str:
        if self.kind in TARGET_KINDS:
            what = f"{self.label}-like" if self.label else (ref or ("target" if self.target is not None else "point"))
            return f"{self.kind}[{what}]"
        if self.kind == "key":
            return f"key {self.key}"
        if self.kind == "type":
            return f"type[{ref or 'text'}]"
        return self.kind


@dataclass
class ToolParam:
    name: str
    step: int  # index of the step it feeds
    kind: str = "span"  # "span": an instruction span; "point": where its (first, pointer) step acts; chosen at the call
    default: tuple[int, int] | None = None  # the span every source episode typed, if they agreed


@dataclass
class Tool:
    id: int
    name: str
    status: str
    steps: list[ToolStep]
    params: list[ToolParam]
    sources: list[int]
    support: int
    calls: int
    successes: int
    created: float
    last_used: float | None
    signature: str = ""
    renamed: bool = False

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.calls if self.calls else None


@dataclass
class ResolveFailure:
    """Why a tool cannot be applied to this screen. Falsy, so `if not lib.resolve(...)` works."""

    step: int
    reason: str
    best_similarity: float | None = None

    def __bool__(self) -> bool:
        return False


CROP_SHAPE = (24, 48, 3)
CROP_N = CROP_SHAPE[0] * CROP_SHAPE[1] * CROP_SHAPE[2]
CENTRE = (slice(CROP_SHAPE[0] // 2 - 4, CROP_SHAPE[0] // 2 + 4), slice(CROP_SHAPE[1] // 2 - 12, CROP_SHAPE[1] // 2 + 12))
CROP_SIGMA = 0.12  # RMS colour difference (0..1) at which crop similarity falls to 1/e (as agent/recall.py)


def _images(crops: np.ndarray):
    """(M, CROP_N) or (CROP_N,) crops in 0..255 -> torch (M, 3, h, w) in 0..1."""
    import torch

    h, w, _ = CROP_SHAPE
    return torch.from_numpy(np.array(crops, np.float32).reshape(-1, h, w, 3)).permute(0, 3, 1, 2) / 255.0  # a copy


def _prepare(crops: np.ndarray):
    """What `crop_similarity` needs of each crop compared with, whatever the new crop: its spectrum (M, 3, h,
    w/2+1) and, at each shift, the energy (sum of squares) of the window the new crop's centre covers."""
    import torch
    import torch.nn.functional as F

    o = _images(crops)
    th, tw = CENTRE[0].stop - CENTRE[0].start, CENTRE[1].stop - CENTRE[1].start
    ii = F.pad((o * o).sum(1), (1, 0, 1, 0)).cumsum(1).cumsum(2)  # integral image
    energy = ii[:, th:, tw:] - ii[:, :-th, tw:] - ii[:, th:, :-tw] + ii[:, :-th, :-tw]  # (M, 17, 25)
    return torch.fft.rfft2(o), energy


def _similarity(crop: np.ndarray, spec, energy) -> np.ndarray:
    """crop_similarity against crops already `_prepare`d."""
    import torch

    h, w, _ = CROP_SHAPE
    t = _images(crop)[0, :, CENTRE[0], CENTRE[1]]  # (3, 8, 24)
    th, tw = t.shape[1:]
    # sum window * centre at every shift, by FFT; shifts where the centre stays inside the crop do not wrap
    cross = torch.fft.irfft2(torch.einsum("mcyx,cyx->myx", spec, torch.fft.rfft2(t, s=(h, w)).conj()), s=(h, w))
    ssd = (energy - 2 * cross[:, :h - th + 1, :w - tw + 1]).flatten(1).amin(1) + (t * t).sum()  # at the best shift
    return torch.exp(-(ssd / t.numel()).clamp(min=0) / CROP_SIGMA ** 2).numpy()  # of the mean squared difference


def crop_similarity(crop: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Similarity in [0, 1] of one crop (CROP_N,) to each of others (M, CROP_N): the centre 8x24 of `crop` slid
    over each other crop (shifts -8..8 down, -12..12 across), exp(-least mean squared colour difference / sigma^2).

    Squared colour difference rather than normalised correlation: colour and contrast count (a red box is not a
    blue one) and a uniform crop needs no special case (1 against the same colour, low against anything else)."""
    return _similarity(crop, *_prepare(np.asarray(others, np.float32).reshape(-1, CROP_N)))


class _CropIndex:
    """The first `n` representatives `_prepare`d, in buffers grown by doubling: comparing a new crop with M
    clusters is one product of spectra and one small inverse FFT per cluster (~15 ms per thousand on one core,
    10x less than sliding it over them; ~30 KB per cluster with the crop itself)."""

    def __init__(self):
        self.n, self.spec, self.energy = 0, None, None

    def extend(self, crops: np.ndarray) -> None:
        spec, energy = _prepare(crops)
        self.spec, self.energy = _grow(self.spec, self.n, spec), _grow(self.energy, self.n, energy)
        self.n += len(crops)

    def similarity(self, crop: np.ndarray) -> np.ndarray:
        return _similarity(crop, self.spec[:self.n], self.energy[:self.n])


def _grow(buf, n: int, extra):
    """buf[:n] followed by extra, in buf itself when it has room, else in a buffer twice as long (numpy or torch)."""
    if buf is None or n + len(extra) > len(buf):
        shape = (max(n + len(extra), 2 * n, 16), *extra.shape[1:])
        new = np.empty(shape, extra.dtype) if isinstance(extra, np.ndarray) else extra.new_empty(shape)
        if n:
            new[:n] = buf[:n]
        buf = new
    buf[n:n + len(extra)] = extra
    return buf


@dataclass
class _Clusters:
    """Appearance clusters of targets, one matrix of rows per target size (a row per cluster, in `ids` order).

    Cosine mode: a row is the sum of its members' unit vectors; a target joins the cluster whose mean is most
    cosine-similar. Crop mode: a row is the cluster's first crop, its representative (never averaged: a mean
    of shifted crops blurs); a target joins the cluster whose representative is most `crop_similarity`-similar.
    """

    crops: bool = False  # crop mode
    ids: dict[int, list[int]] = field(default_factory=dict)
    buffers: dict[int, np.ndarray] = field(default_factory=dict)  # dim -> (capacity, dim); see rows()
    counts: dict[int, int] = field(default_factory=dict)
    labels: dict[int, Counter] = field(default_factory=dict)
    thumbs: dict[int, bytes | None] = field(default_factory=dict)
    next_id: int = 1
    dirty: set = field(default_factory=set)
    index: _CropIndex = field(default_factory=_CropIndex)  # crop mode: rows(CROP_N)[:index.n], prepared

    def rows(self, dim: int) -> np.ndarray:
        return self.buffers[dim][:len(self.ids[dim])]

    def add(self, cid: int, row: np.ndarray) -> None:
        ids = self.ids.setdefault(len(row), [])
        self.buffers[len(row)] = _grow(self.buffers.get(len(row)), len(ids), np.asarray(row, np.float32)[None])
        ids.append(cid)

    def drop(self, cids: set) -> None:
        for dim, ids in self.ids.items():
            keep = [j for j, cid in enumerate(ids) if cid not in cids]
            self.buffers[dim], self.ids[dim] = self.rows(dim)[keep], [ids[j] for j in keep]
        for cid in cids:
            for d in (self.counts, self.labels, self.thumbs):
                d.pop(cid, None)
        self.index = _CropIndex()

    def centroid(self, cid: int) -> np.ndarray:
        for dim, ids in self.ids.items():
            if cid in ids:
                v = self.rows(dim)[ids.index(cid)]
                return v.copy() if self.crops else (v / np.linalg.norm(v)).astype(np.float32)
        raise KeyError(cid)

    def label(self, cid: int) -> str | None:
        c = self.labels.get(cid)
        return c.most_common(1)[0][0] if c else None

    def similarities(self, v: np.ndarray) -> np.ndarray:
        """Of a target (normalised in cosine mode) to every cluster of its size, in `ids` order."""
        rows = self.rows(len(v))
        if not self.crops:
            return (rows @ v) / np.maximum(1e-12, np.linalg.norm(rows, axis=1))
        if self.index.n < len(rows):
            self.index.extend(rows[self.index.n:])
        return self.index.similarity(v)

    def assign(self, target: np.ndarray, threshold: float, label: str | None, thumb: bytes | None) -> int | None:
        """The cluster the target joins (a new one if none is similar enough); None for a target this mode cannot
        compare (crop mode: anything but a CROP_N crop)."""
        v = np.asarray(target, np.float32).ravel()
        if self.crops and len(v) != CROP_N:
            return None
        if not self.crops:
            v = v / max(1e-12, float(np.linalg.norm(v)))
        cid = None
        if self.ids.get(len(v)):
            sims = self.similarities(v)
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                cid = self.ids[len(v)][j]
                if not self.crops:
                    self.rows(len(v))[j] += v
        if cid is None:
            cid = self.next_id
            self.next_id += 1
            self.add(cid, v)
            self.thumbs[cid] = thumb
        self.counts[cid] = self.counts.get(cid, 0) + 1
        if label:
            self.labels.setdefault(cid, Counter())[label] += 1
        if self.thumbs.get(cid) is None and thumb is not None:
            self.thumbs[cid] = thumb
        self.dirty.add(cid)
        return cid


def poisson_sf(s: int, mu: float) -> float:
    """P(X >= s) for X ~ Poisson(mu); returns 1.0 when s <= mu (never surprising)."""
    if s <= 0 or s <= mu:
        return 1.0
    if mu <= 0:
        return 0.0
    term = math.exp(-mu + s * math.log(mu) - math.lgamma(s + 1))
    total, i = term, s
    while term > 1e-18 * total and i < s + 10_000:
        i += 1
        term *= mu / i
        total += term
    return min(1.0, total)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(1e-12, np.linalg.norm(v, axis=-1, keepdims=True))


class ToolLibrary:
    """Mine, store and serve tools, in the agent database."""

    def __init__(self, db: AgentDB, *, target_similarity: float = 0.9, min_support: int = 3, max_len: int = 8,
                 alpha: float = 0.01, closed_ratio: float = 0.8, demote_after: int = 3, window: int = 2000,
                 auto_activate: int | None = None, max_targets: int = 20_000, target_match: str = "cosine"):
        if target_match not in ("cosine", "crop"):
            raise ValueError(f"target_match must be cosine or crop, not {target_match!r}")
        self.db = db
        self.target_match = target_match
        self.target_similarity = target_similarity
        self.min_support = min_support
        self.max_len = max_len
        self.alpha = alpha
        self.closed_ratio = closed_ratio
        self.demote_after = demote_after
        self.window = window
        self.auto_activate = auto_activate  # support at which a new tool starts active; None: people approve
        self.max_targets = max_targets  # appearance clusters kept; beyond, the oldest seen-once ones go
        self._clusters: _Clusters | None = None
        self._clusters_stamp = None

    # ---------------------------------------------------------------- mining
    def _load_clusters(self) -> _Clusters:
        stamp = self.db.read("SELECT count(*), max(id), sum(count) FROM tool_targets")[0]
        if self._clusters is not None and stamp != self._clusters_stamp:
            self._clusters = None  # another ToolLibrary on this database changed them
        if self._clusters is None:
            cl = _Clusters(crops=self.target_match == "crop")
            rows: dict[int, list[np.ndarray]] = {}
            for cid, blob, count, label, thumb in self.db.read(
                    "SELECT id, centroid, count, label, thumbnail FROM tool_targets ORDER BY id"):
                v = from_blob(blob)
                cl.next_id = max(cl.next_id, cid + 1)
                if cl.crops and len(v) != CROP_N:
                    continue  # another mode's clusters in the same database
                cl.ids.setdefault(len(v), []).append(cid)
                rows.setdefault(len(v), []).append(v if cl.crops else v * count)
                cl.counts[cid] = count
                cl.labels[cid] = Counter(json.loads(label)) if label else Counter()
                cl.thumbs[cid] = thumb
            cl.buffers = {dim: np.stack(r).astype(np.float32) for dim, r in rows.items()}
            cl.next_id = max(cl.next_id, int(self.db.get_meta("tool_targets_next", "1")))  # ids are never reused
            self._clusters, self._clusters_stamp = cl, stamp
        return self._clusters

    def _save_clusters(self, c) -> None:
        cl = self._clusters
        for cid in sorted(cl.dirty):
            c.execute("INSERT INTO tool_targets(id, centroid, count, label, thumbnail) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT(id) DO UPDATE SET centroid = excluded.centroid, count = excluded.count, "
                      "label = excluded.label, thumbnail = excluded.thumbnail",
                      (cid, to_blob(cl.centroid(cid)), cl.counts[cid], json.dumps(dict(cl.labels.get(cid, {}))) or None,
                       cl.thumbs.get(cid)))
        cl.dirty.clear()
        n = sum(len(ids) for ids in cl.ids.values())
        if n > self.max_targets:
            in_tools = {int(t.split("@")[1]) for (sig,) in c.execute("SELECT signature FROM tools").fetchall()
                        for t in sig.split() if "@" in t and not t.endswith(POINT)}
            drop = [cid for ids in cl.ids.values() for cid in ids if cl.counts[cid] == 1 and cid not in in_tools]
            drop = set(sorted(drop)[:n - self.max_targets])
            c.executemany("DELETE FROM tool_targets WHERE id = ?", [(cid,) for cid in drop])
            cl.drop(drop)
        c.execute("INSERT INTO meta(key, value) VALUES ('tool_targets_next', ?) "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(cl.next_id),))
        self._clusters_stamp = c.execute("SELECT count(*), max(id), sum(count) FROM tool_targets").fetchone()

    def _tokenise(self, steps: list[ToolStep]) -> list[list]:
        """Per step: [token or None, key, span, offset, label]. None tokens cannot be part of a tool."""
        cl = self._load_clusters()
        out = []
        for s in steps:
            tok = None
            if s.kind in TARGET_KINDS:
                cid = None if s.target is None else \
                    cl.assign(s.target, self.target_similarity, s.label, check_thumbnail(s.thumbnail))
                tok = None if cid is None else f"{s.kind}@{cid}"
            elif s.kind == "key":
                tok = f"key:{s.key}" if s.key else None
            elif s.kind in ("type", "done"):
                tok = s.kind
            out.append([tok, s.key, None if s.span is None else list(s.span),
                        None if s.offset is None else list(s.offset), s.label])
        return out

    def mine(self, episodes: list[list[ToolStep]], episode_ids: list[int] | None = None) -> list[int]:
        """Mine these (successful) episodes; returns the ids of tools created or updated."""
        if episode_ids is not None and len(episode_ids) != len(episodes):
            raise ValueError("episode_ids must have one id per episode")
        with self.db.lock:
            try:
                infos = [self._tokenise(ep) for ep in episodes]
                with self.db.transaction() as c:
                    self._save_clusters(c)
            except BaseException:
                self._clusters = None  # drop unsaved cluster changes
                raise
            return self._mine_infos(infos, list(episode_ids) if episode_ids is not None else [None] * len(infos))

    def mine_new(self) -> list[int]:
        """Tokenise successful episodes not mined yet, then mine the latest `window` of them.
        Run it after episodes end (e.g. from a background thread), never on the acting path."""
        with self.db.lock:
            new = [r[0] for r in self.db.read(
                "SELECT e.id FROM episodes e LEFT JOIN mined m ON m.episode_id = e.id "
                "WHERE e.outcome = 'success' AND m.episode_id IS NULL ORDER BY e.id")]
            if not new:
                return []
            rows = []
            try:
                for eid in new:
                    steps = [ToolStep.from_action(s.action, s.target, s.thumbnail) for s in self.db.steps(eid)]
                    rows.append((eid, json.dumps(self._tokenise(steps))))
                with self.db.transaction() as c:
                    self._save_clusters(c)
                    c.executemany("INSERT OR IGNORE INTO mined(episode_id, tokens) VALUES (?, ?)", rows)
            except BaseException:
                self._clusters = None  # drop unsaved cluster changes
                raise
            recent = self.db.read("SELECT episode_id, tokens FROM mined ORDER BY episode_id DESC LIMIT ?", (self.window,))
            recent.reverse()
            return self._mine_infos([json.loads(t) for _, t in recent], [e for e, _ in recent])

    def _mine_infos(self, infos: list[list[list]], episode_ids: list[int | None]) -> list[int]:
        seqs = [[s[0] for s in info] for info in infos]
        support: Counter = Counter()  # episodes containing the sequence
        occ: Counter = Counter()  # occurrences of it, all lengths from 1
        where: dict[tuple, list[tuple[int, int]]] = {}
        for e, seq in enumerate(seqs):
            seen = set()
            for n in range(1, self.max_len + 1):
                for s in range(len(seq) - n + 1):
                    g = tuple(seq[s:s + n])
                    if None in g:
                        continue
                    occ[g] += 1
                    if n == 1 or g in seen:
                        continue
                    seen.add(g)
                    support[g] += 1
                    where.setdefault(g, []).append((e, s))
        total = sum(c for g, c in occ.items() if len(g) == 1)
        tested = [g for g, s in support.items() if s >= self.min_support]
        if not tested:
            return []
        lengths = np.array([len(q) for q in seqs], np.float64)
        level = self.alpha / len(tested)
        significant = {}
        for g in tested:
            # Chance level: tokens independent, or g's prefix (suffix) followed (preceded) by a random token.
            p = {t: occ[(t,)] / total for t in g}
            windows = np.maximum(0.0, lengths - len(g) + 1)
            chance = math.prod(p[t] for t in g)
            expected = max(float(np.sum(-np.expm1(windows * math.log1p(-min(chance, 1 - 1e-12))))),
                           occ[g[:-1]] * p[g[-1]], occ[g[1:]] * p[g[0]])
            if poisson_sf(support[g], expected) < level:
                significant[g] = support[g]
        closed = []
        for g, s in significant.items():
            n = len(g)
            dominated = any(len(h) > n and significant[h] >= self.closed_ratio * s
                            and any(h[i:i + n] == g for i in range(len(h) - n + 1)) for h in significant)
            if not dominated:
                closed.append(g)
        ids = [self._upsert(g, where[g], infos, episode_ids) for g in sorted(closed, key=lambda g: (-len(g), g))]
        # the same routine from different first targets: one point tool (the caller chooses where its first step acts)
        alike: dict[tuple, list[tuple]] = {}
        for g in closed:
            if len(g) >= 2 and "@" in g[0]:
                alike.setdefault((g[0].split("@")[0] + POINT,) + g[1:], []).append(g)
        for p, gs in sorted(alike.items()):
            if len(gs) >= 2:
                first = {}  # one occurrence per episode, as for any tool
                for e, at in sorted(o for g in gs for o in where[g]):
                    first.setdefault(e, (e, at))
                ids.append(self._upsert(p, list(first.values()), infos, episode_ids))
        return ids

    def _upsert(self, g: tuple, occurrences: list[tuple[int, int]], infos, episode_ids) -> int:
        cl = self._load_clusters()
        steps, params, refs = [], [], []
        for j, tok in enumerate(g):
            occ = [infos[e][s + j] for e, s in occurrences]
            kind = tok.split("@")[0].split(":")[0]
            step = ToolStep(kind=kind)
            ref = None
            if tok.endswith(POINT):
                ref = "point"
                params.append(ToolParam(ref, j, "point"))
            elif kind in TARGET_KINDS:
                cid = int(tok.split("@")[1])
                step.target = cl.centroid(cid)
                step.thumbnail = cl.thumbs.get(cid)
                labels = Counter(o[4] for o in occ if o[4])
                step.label = labels.most_common(1)[0][0] if labels else cl.label(cid)
                offsets = [o[3] for o in occ if o[3] is not None]
                step.offset = tuple(float(x) for x in np.mean(offsets, axis=0)) if offsets else None
                ref = f"#{cid}"
            elif kind == "key":
                step.key = tok.split(":", 1)[1]
            elif kind == "type":
                spans = {tuple(o[2]) for o in occ if o[2] is not None}
                default = next(iter(spans)) if len(spans) == 1 and all(o[2] is not None for o in occ) else None
                step.span = default
                ref = f"text{len(params) + 1}"
                params.append(ToolParam(ref, j, "span", default))
            steps.append(step)
            refs.append(ref)
        name = " → ".join(s.describe(r) for s, r in zip(steps, refs))
        signature = " ".join(g)
        sources = sorted({episode_ids[e] for e, _ in occurrences if episode_ids[e] is not None})
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute("SELECT id, renamed FROM tools WHERE signature = ?", (signature,)).fetchone()
            if row is None:
                status = "active" if self.auto_activate is not None and len(occurrences) >= self.auto_activate else "candidate"
                tid = c.execute("INSERT INTO tools(name, signature, status, params, support, created) VALUES (?, ?, ?, ?, ?, ?)",
                                (name, signature, status, self._params_json(params), len(occurrences), now)).lastrowid
            else:
                tid = row[0]
                c.execute("UPDATE tools SET support = max(support, ?), params = ?" + ("" if row[1] else ", name = ?")
                          + " WHERE id = ?", (len(occurrences), self._params_json(params)) + (() if row[1] else (name,)) + (tid,))
                c.execute("DELETE FROM tool_steps WHERE tool_id = ?", (tid,))
            c.executemany("INSERT INTO tool_steps(tool_id, idx, kind, key, span, target, thumbnail, offset, label) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(tid, j, s.kind, s.key, None if s.span is None else json.dumps(list(s.span)), to_blob(s.target),
                            s.thumbnail, None if s.offset is None else json.dumps(list(s.offset)), s.label)
                           for j, s in enumerate(steps)])
            c.executemany("INSERT OR IGNORE INTO tool_sources(tool_id, episode_id) VALUES (?, ?)", [(tid, e) for e in sources])
        return tid

    @staticmethod
    def _params_json(params: list[ToolParam]) -> str:
        return json.dumps([{"name": p.name, "step": p.step, "kind": p.kind,
                            "default": None if p.default is None else list(p.default)} for p in params])

    # ---------------------------------------------------------------- the record
    def _load(self, rows) -> list[Tool]:
        tools = []
        for (tid, name, status, params, support, calls, successes, created, last_used, signature, renamed) in rows:
            steps = [ToolStep(kind=k, key=key, span=None if span is None else tuple(json.loads(span)), target=from_blob(t),
                              thumbnail=th, offset=None if off is None else tuple(json.loads(off)), label=label)
                     for k, key, span, t, th, off, label in self.db.read(
                         "SELECT kind, key, span, target, thumbnail, offset, label FROM tool_steps WHERE tool_id = ? "
                         "ORDER BY idx", (tid,))]
            sources = [r[0] for r in self.db.read("SELECT episode_id FROM tool_sources WHERE tool_id = ? ORDER BY episode_id",
                                                  (tid,))]
            ps = [ToolParam(p["name"], p["step"], p["kind"], None if p["default"] is None else tuple(p["default"]))
                  for p in json.loads(params)]
            tools.append(Tool(tid, name, status, steps, ps, sources, support, calls, successes, created, last_used,
                              signature, bool(renamed)))
        return tools

    _SELECT = ("SELECT id, name, status, params, support, calls, successes, created, last_used, signature, renamed "
               "FROM tools")

    def list(self, status: str | None = None) -> list[Tool]:
        """All tools (or those with one status), oldest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        with self.db.lock:
            return self._load(self.db.read(self._SELECT + (" WHERE status = ?" if status else "") + " ORDER BY id",
                                           (status,) if status else ()))

    def get(self, tool_id: int) -> Tool:
        with self.db.lock:
            tools = self._load(self.db.read(self._SELECT + " WHERE id = ?", (tool_id,)))
        if not tools:
            raise KeyError(f"no tool {tool_id}")
        return tools[0]

    def candidates_for_policy(self) -> list[Tool]:
        """The tools the policy may call: active ones only, in a stable order."""
        return self.list("active")

    def _set(self, tool_id: int, sql: str, params: tuple = ()) -> None:
        with self.db.transaction() as c:
            if c.execute(f"UPDATE tools SET {sql} WHERE id = ?", params + (tool_id,)).rowcount != 1:
                raise KeyError(f"no tool {tool_id}")

    def rename(self, tool_id: int, name: str) -> None:
        if not name.strip():
            raise ValueError("a tool's name cannot be empty")
        self._set(tool_id, "name = ?, renamed = 1", (name.strip(),))

    def approve(self, tool_id: int) -> None:
        """Make a tool active: offered to the policy."""
        self._set(tool_id, "status = 'active', fail_streak = 0")

    def prune(self, tool_id: int) -> None:
        """Never offer this tool again (mining will not re-create it); it stays on record."""
        self._set(tool_id, "status = 'pruned'")

    def restore(self, tool_id: int) -> None:
        """Bring a pruned (or active) tool back to candidate."""
        self._set(tool_id, "status = 'candidate', fail_streak = 0")

    def record_call(self, tool_id: int, success: bool) -> None:
        """Count a call of the tool by the policy; `demote_after` failures in a row demote an active tool."""
        with self.db.transaction() as c:
            n = c.execute("UPDATE tools SET calls = calls + 1, successes = successes + ?, last_used = ?, "
                          "fail_streak = CASE WHEN ? THEN 0 ELSE fail_streak + 1 END WHERE id = ?",
                          (int(bool(success)), time.time(), int(bool(success)), tool_id)).rowcount
            if n != 1:
                raise KeyError(f"no tool {tool_id}")
            c.execute("UPDATE tools SET status = 'candidate', fail_streak = 0 WHERE id = ? AND status = 'active' "
                      "AND fail_streak >= ?", (tool_id, self.demote_after))

    # ---------------------------------------------------------------- applying
    def resolve(self, tool: Tool | int, patch_embeddings: np.ndarray, threshold: float = 0.8, start: int = 0,
                stop: int | None = None) -> list[tuple[ToolStep, int | None]] | ResolveFailure:
        """Find each step's target among this screen's patches (N, D) by cosine similarity.

        Returns [(step, patch index or None for steps without a target)] for steps start..stop, or a
        `ResolveFailure` naming the first step whose best patch is below `threshold`. A step whose
        target only appears after the previous steps act (a menu item) should be resolved on its own
        screen: call again with `start` set to that step.
        """
        if self.target_match == "crop":
            raise ValueError("crop targets are found on the frame, by appearance (agent/tools.py ToolSet.resolve)")
        if not isinstance(tool, Tool):
            tool = self.get(tool)
        patches = _normalise(np.asarray(patch_embeddings, np.float32).reshape(len(patch_embeddings), -1))
        out: list[tuple[ToolStep, int | None]] = []
        for j in range(start, len(tool.steps) if stop is None else stop):
            step = tool.steps[j]
            if step.target is None:
                out.append((step, None))
                continue
            what = step.describe(f"#{j + 1}")
            if len(patches) == 0:
                return ResolveFailure(j, f"step {j + 1} ({what}): the screen has no patches")
            if patches.shape[1] != len(step.target):
                return ResolveFailure(j, f"step {j + 1} ({what}): its target is a {len(step.target)}-d embedding but "
                                         f"the screen's patches are {patches.shape[1]}-d (another encoder?)")
            sims = patches @ _normalise(step.target)
            best = int(np.argmax(sims))
            if sims[best] < threshold:
                return ResolveFailure(j, f"step {j + 1} ({what}): no patch on this screen looks like its target "
                                         f"(best similarity {sims[best]:.2f} < {threshold:.2f})", float(sims[best]))
            out.append((step, best))
        return out
