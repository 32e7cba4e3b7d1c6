"""Recall: episodic memory in the policy, as a content-addressed click prior.

When an episode succeeds, the appearance of every place it pointed at (a 16x48 colour crop around the
point) is written to episodic memory (memory/episodic.py) under the key of its goal (the instruction's
MiniLM embedding). When acting, k targets of the nearest remembered goals are looked up, chosen to differ in
look (`diverse`: a repeated instruction has many at the same key), and their crops are compared with every
place on the screen, giving one map per remembered target over the policy's 4-pixel cells.
The policy adds a learned multiple of the best (goal-similarity-weighted) map to its point logits, so it
learns how much to trust memory, and one success helps at once, before any gradient step. The crops are
pixels, not learned features, so what is remembered never goes stale while the encoder keeps training.

The recalled neighbours also enter the policy as tokens beside the instruction's and the screen's (what was
done there: the action's type, the episode's return, how close its goal is, and the target's coarse colour
appearance, MEM_F features each), so the fused state can attend to what memory suggests.

The comparison is colour squared difference (structure and colour both count: a red box is not a blue
one, which normalised correlation could not tell), at half resolution, through FFTs:
    ssd(y, x) = sum window^2 - 2 sum window*crop + sum crop^2,   similarity = exp(-mean ssd / SIGMA^2)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from agent.actions import ActionType
from agent.reading import CELL

CROP_H, CROP_W = 16, 48  # the remembered appearance around a point
MAP_SHAPE = (208 // CELL, 160 // CELL)  # the policy's point cells over the 208x160 task area
CANDIDATES = 8  # recall chooses its k targets among the CANDIDATES x k nearest and newest (`diverse`)
SIGMA = 0.12  # colour difference (in [0,1] units, RMS over the crop) at which similarity falls to 1/e
MEM_F = len(ActionType) + 3 + (CROP_H // 4) * (CROP_W // 4) * 3  # features of one recalled neighbour (a token)


def token_features(crops: np.ndarray, actions: list[dict], returns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(M, MEM_F) float32: per recalled neighbour its action type (one-hot), return, goal weight, step in its
    episode (/8), and its target's appearance pooled to 4x12 colour cells (centred on 0)."""
    out = np.zeros((len(crops), MEM_F), np.float32)
    n = len(ActionType)
    for i, (a, r, w) in enumerate(zip(actions, returns, weights)):
        name = str(a.get("type") or a.get("kind") or "").upper()
        if name in ActionType.__members__:
            out[i, ActionType[name]] = 1.0
        out[i, n:n + 3] = (np.clip(r, -2.0, 2.0), w, min(float(a.get("step") or 0), 8.0) / 8.0)
    if len(crops):
        pooled = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0, 4)
        out[:, n + 3:] = (pooled.flatten(1) - 0.5).numpy()
    return out


def crop(frame: np.ndarray, x: int, y: int, h: int = CROP_H, w: int = CROP_W) -> np.ndarray:
    """(h, w, 3) uint8 appearance centred on (x, y); outside the frame is white."""
    out = np.full((h, w, 3), 255, np.uint8)
    y0, x0 = y - h // 2, x - w // 2
    ys, xs = slice(max(y0, 0), min(y0 + h, frame.shape[0])), slice(max(x0, 0), min(x0 + w, frame.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = frame[ys, xs, :3]
    return out


@torch.no_grad()
def appearance_maps(frame: np.ndarray, crops: np.ndarray, height: int = 208, width: int = 160) -> torch.Tensor:
    """frame (H,W,3) uint8, crops (M,CROP_H,CROP_W,3) uint8 -> (M, height/4, width/4) similarity in [0,1] of
    each crop centred in each 4x4 cell."""
    s = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(frame[:height, :width, :3])).permute(2, 0, 1).float()[None]
                     / 255.0, 2)[0]  # (3,h,w) at half resolution
    t = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0, 2)  # (M,3,th,tw)
    M, _, th, tw = t.shape
    _, h, w = s.shape
    Hp, Wp = h + th, w + tw
    cross = torch.fft.irfft2((torch.fft.rfft2(s, s=(Hp, Wp))[None] * torch.fft.rfft2(t, s=(Hp, Wp)).conj()).sum(1),
                             s=(Hp, Wp))[:, :h, :w]  # (M,h,w): sum window*crop, crop's top-left at (y, x)
    ii = F.pad(F.pad((s * s).sum(0), (1, 0, 1, 0)).cumsum(0).cumsum(1)[None], (0, tw, 0, th), mode="replicate")[0]
    energy = ii[th:th + h, tw:tw + w] - ii[:h, tw:tw + w] - ii[th:th + h, :w] + ii[:h, :w]  # (h,w) sum window^2
    ssd = (energy[None] - 2 * cross + (t * t).sum((1, 2, 3))[:, None, None]).clamp(min=0) / (3 * th * tw)
    sim = torch.exp(-ssd / SIGMA ** 2)
    sim = F.pad(sim, (tw // 2, 0, th // 2, 0))[..., :h, :w]  # at the crop's centre, not its top-left
    return F.max_pool2d(sim[:, None], CELL // 2)[:, 0]  # half-resolution pixels -> the policy's 4-px cells


def diverse(crops: np.ndarray, weights: np.ndarray, ids: np.ndarray, k: int) -> list[int]:
    """Indices of k of the candidates, spread over what they look like: the newest of the best-weighted first, then
    each time the one farthest (mean squared colour difference, times its weight) from all chosen so far (the newest
    among equals).

    A repeated instruction has hundreds of remembered targets at the same key, and the index returns the same few
    of them every time. The policy takes the best match over the recalled targets, so what matters is that they
    cover the ways a target can look: "Confirm the dialog." is an "OK" or a "Yes" button, and an "OK" crop on a
    Yes/No dialog matches "No" best (same width). Measured on 15 new confirm-dialog screens, each set from the same 12
    remembered targets: the prior's peak is on the right button for the first 4 of them 0.60 (Cancel: 0.95), for 4
    at random 1.00 (0.43), for these 4 1.00 (0.95), for all 12 1.00 (0.95)."""
    if len(crops) <= k:
        return list(range(len(crops)))
    c = crops.reshape(len(crops), -1).astype(np.float32) / 255.0
    first = int(np.lexsort((-ids, -weights))[0])
    chosen, d = [first], ((c - c[first]) ** 2).mean(1)
    while len(chosen) < k:
        score = d * weights
        score[chosen] = -1.0
        best = np.flatnonzero(score == score.max())
        i = int(best[ids[best].argmax()])  # among equals (identical crops), the newest
        chosen.append(i)
        d = np.minimum(d, ((c - c[i]) ** 2).mean(1))
    return chosen


class Recall:
    """Writes successful episodes' targets to episodic memory and turns lookups into click-prior maps."""

    def __init__(self, memory, k: int = 4, min_similarity: float = 0.5, temperature: float = 0.05):
        self.memory, self.k, self.min_similarity, self.temperature = memory, k, min_similarity, temperature
        self._hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # instruction -> (crops, weights) until a write

    def remember(self, task: str, key: np.ndarray, points: list[tuple[np.ndarray, int, int, dict]], ret: float,
                 episode_id: int | None = None) -> None:
        """An episode that succeeded: (frame, x, y, action) of each step that pointed somewhere."""
        if not points:
            return
        crops = [crop(f, x, y) for f, x, y, _ in points]
        self.memory.add_many(task, np.repeat(np.asarray(key, np.float32)[None], len(points), 0),
                             [a for *_, a in points], [c.astype(np.float32).ravel() for c in crops],
                             [ret] * len(points), [True] * len(points), episode_id=episode_id,
                             steps=[a.get("step") for *_, a in points])
        self._hits.clear()

    def lookup(self, instruction: str, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M, CROP_H, CROP_W, 3) uint8 crops, (M,) weights and (M, MEM_F) token features of k remembered successful
        targets near the goal; M may be 0. Sentence embeddings of instructions that differ in one word are still close
        (cosine ~0.8), so the weight is sharp: exp((cosine - 1) / temperature), 1 for the same goal, ~0.02 for cosine
        0.8. The k are chosen to differ (`diverse`) from the CANDIDATES x k nearest and as many newest at the same
        key (a repeated instruction: the index alone returns its oldest). Cached per instruction until memory
        changes."""
        hit = self._hits.get(instruction)
        if hit is None:
            n = CROP_H * CROP_W * 3
            key = np.asarray(key, np.float32)[None]
            near = self.memory.query(key, CANDIDATES * self.k, count_uses=False)
            seen = {h.id for h in near}  # the index returns the oldest of equal keys: the newest join them
            near += [h for h in self.memory.newest_at(key, CANDIDATES * self.k) if h.id not in seen]
            found = [h for h in near
                     if h.success and h.similarity >= self.min_similarity and h.target_embedding is not None
                     and h.target_embedding.size == n]
            crops = np.stack([h.target_embedding.reshape(CROP_H, CROP_W, 3).astype(np.uint8) for h in found]) \
                if found else np.zeros((0, CROP_H, CROP_W, 3), np.uint8)
            w = np.exp((np.array([h.similarity for h in found], np.float32) - 1.0) / self.temperature).astype(np.float32)
            keep = diverse(crops, w, np.array([h.id for h in found]), self.k)
            found, crops, w = [found[i] for i in keep], crops[keep], w[keep]
            self.memory.used(h.id for h in found)
            feats = token_features(crops, [h.action for h in found], np.array([h.ret for h in found], np.float32), w)
            hit = self._hits[instruction] = (crops, w, feats)
            if len(self._hits) > 1024:
                self._hits.clear()
        return hit

    def maps(self, frames: np.ndarray, instructions: list[str], keys: np.ndarray) -> list[torch.Tensor]:
        """Per row: (M_i, h, w) float16 click-prior maps, goal-similarity-weighted (M_i = 0: nothing recalled)."""
        out = []
        for frame, instruction, key in zip(frames, instructions, keys):
            crops, w, _ = self.lookup(instruction, key)
            m = appearance_maps(frame, crops) * torch.from_numpy(w)[:, None, None] if len(crops) else \
                torch.zeros(0, *MAP_SHAPE)
            out.append(m.half())
        return out

    def tokens(self, instructions: list[str], keys: np.ndarray) -> list[torch.Tensor]:
        """Per row: (M_i, MEM_F) features of the recalled neighbours, the policy's memory tokens."""
        return [torch.from_numpy(self.lookup(instruction, key)[2]) for instruction, key in zip(instructions, keys)]
