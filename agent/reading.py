"""Reading by matching: where on the screen does each instruction word appear?

Each word of the instruction is rendered in the desktop's font (agent/instruction.py) and matched
against the screen by normalised cross-correlation at full resolution, through FFTs (15-19 ms for a
nine-word instruction on one thread here). The response is max-pooled to the policy's 4-pixel
sub-cells. This is a fixed perceptual primitive, like the frozen sentence encoder: the policy *learns*
which word to look for, when, and how much to trust the match; the learned matcher in agent/policy.py
(shared conv stem) refines it. Measured on click-button screens: the target word's peak is on its
button for 95% of screens at full resolution, against 53% on 4x4-pooled pixels and ~30% on
random-init conv features.

Qt lays some words out a pixel wider than the template (a glyph placed half a pixel further on): on
focus-text screens "Email" and "Phone" matched themselves at 0.73-0.76 while "in", "the" or "Enter"
matched them at up to 0.84. Each word is therefore also matched a pixel wider and half a pixel to the
right (STRETCH), and its best is kept: the labels then match themselves at 0.93 or more (Name and City
at 1.0), other words at them still at most 0.84. A third variant (half a pixel left) added nothing on
those screens. The cost is real: `squirrel bench latency` median decision 55 ms against 32 ms with one
template (two runs each, alternated), the loop 6.5 against 6.8 env steps/s.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

CELL = 4  # pixels per sub-cell of the policy's point head
STRETCH = ((0, 0.0), (1, 0.5))  # (px wider, px right) each word is also matched at; the best is kept


class _Templates(NamedTuple):
    ft: torch.Tensor  # (K,Hp,Wp/2+1) complex: FFT of the zero-mean, masked word images
    tnorm: torch.Tensor  # (K,)
    n: torch.Tensor  # (K,) pixels inside each word
    cols: torch.Tensor  # (K,2) first and last+1 column of each word in its template
    mask: torch.Tensor  # (K,) bool
    shape: tuple[int, int]  # template (h, w)


_CACHE: OrderedDict = OrderedDict()  # the same instruction's words are matched against every frame: FFT them once


def _stretch(t: torch.Tensor, widths: torch.Tensor, d: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,h,w) centred word ink, (K,) widths -> each word resampled `d` px wider about its centre and moved
    `shift` px right (linear interpolation), and the new widths."""
    if d == 0 and shift == 0:
        return t, widths
    K, th, tw = t.shape
    u = torch.arange(tw).float() + 0.5 - tw / 2  # column centres, relative to the word's centre
    new = (widths + d).clamp(min=2)
    src = (u[None] - shift) * (widths / new)[:, None] + tw / 2 - 0.5  # (K,w) where each output column samples from
    lo = src.floor().clamp(0, tw - 1).long()
    hi, f = (lo + 1).clamp(max=tw - 1), (src - src.floor()).clamp(0, 1)
    take = lambda i: t.gather(2, i[:, None].expand(K, th, tw))
    return take(lo) * (1 - f[:, None]) + take(hi) * f[:, None], torch.where(widths > 0, new, widths)


def _templates(word_pixels: np.ndarray, widths: np.ndarray, mask: np.ndarray, H: int, W: int) -> _Templates:
    """Each word's template at STRETCH widths, stacked: (len(STRETCH) * K, ...), variant-major."""
    key = (hash(word_pixels.tobytes()), widths.tobytes(), mask.tobytes(), H, W)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    t = 1.0 - torch.from_numpy(word_pixels).float().mean(-1) / 255.0  # (K,h,w), ink is high
    w0 = torch.from_numpy(widths).float()
    variants = [_stretch(t, w0, d, shift) for d, shift in STRETCH]
    t, widths_t = torch.cat([v[0] for v in variants]), torch.cat([v[1] for v in variants])
    mask = np.tile(mask, len(STRETCH))
    K, th, tw = t.shape
    cols = torch.arange(tw).float()
    m = ((cols[None] + 0.5 - tw / 2).abs() <= (widths_t[:, None] / 2).clamp(min=1)).float()[:, None, :].expand(K, th, tw)
    n = m.sum((1, 2)).clamp(min=1)
    t = (t - (t * m).sum((1, 2), keepdim=True) / n[:, None, None]) * m  # zero-mean inside the word
    c0 = (tw / 2 - widths_t / 2).clamp(min=0).floor().long()
    c1 = (c0 + widths_t.clamp(min=2).long()).clamp(max=tw)
    tpl = _Templates(torch.fft.rfft2(t, s=(H + th, W + tw)).conj(), t.flatten(1).norm(dim=-1).clamp(min=1e-4), n,
                     torch.stack([c0, c1], 1), torch.from_numpy(mask).bool(), (th, tw))
    _CACHE[key] = tpl
    if len(_CACHE) > 256:
        _CACHE.popitem(last=False)
    return tpl


@torch.no_grad()
def match_maps(frames: np.ndarray, word_pixels: torch.Tensor | np.ndarray, widths, mask, height: int = 208,
               width: int = 160) -> torch.Tensor:
    """frames (B,H,W,3) uint8, word_pixels (B,K,h,w,3) uint8 (words centred), widths (B,K) px, mask (B,K) bool
    -> (B,K,height/4,width/4) float32 in [-1,1]: the best match of each word centred in each 4x4 cell."""
    s = 1.0 - torch.from_numpy(np.ascontiguousarray(frames[:, :height, :width])).float().mean(-1) / 255.0  # (B,H,W)
    word_pixels, widths, mask = (np.asarray(a) for a in (word_pixels, widths, mask))
    B, H, W = s.shape
    K, th, tw = word_pixels.shape[1:4]
    # Blank margin above and left of the screen (th/2, tw/2 px), so that template top-left (y, x) of the padded
    # screen is the word centred at screen (y, x): a word near the left or top edge (a left-aligned label, the
    # first word of a header line) is matched like any other. Without it, centres left of tw/2 were never tried.
    s = F.pad(s, (tw // 2, 0, th // 2, 0))
    Hs, Ws = s.shape[1:]
    Hp, Wp = Hs + th, Ws + tw
    fs = torch.fft.rfft2(s, s=(Hp, Wp))  # (B,..)
    # window sums of the screen over each word's rectangle (rows y..y+th, its own columns) via integral images
    ii = F.pad(F.pad(s, (1, 0, 1, 0)).cumsum(1).cumsum(2), (0, tw, 0, th), mode="replicate")  # (B,Hp+1,Wp+1)
    ii2 = F.pad(F.pad(s * s, (1, 0, 1, 0)).cumsum(1).cumsum(2), (0, tw, 0, th), mode="replicate")
    V = len(STRETCH)
    out = torch.full((B, V * K, H, W), -1.0)
    for b in range(B):
        tpl = _templates(word_pixels[b], widths[b], mask[b], Hs, Ws)
        on = tpl.mask.nonzero()[:, 0]
        if not len(on):
            continue
        # correlation via FFT: num[y, x] = sum_ij s[y+i, x+j] t[i, j]  (template top-left at padded (y, x))
        num = torch.fft.irfft2(fs[b] * tpl.ft[on], s=(Hp, Wp))[..., :H, :W]  # (k,H,W)
        x0, x1 = tpl.cols[on, 0], tpl.cols[on, 1]

        def box(i):  # (k,H,W) sums over rows y..y+th and columns x+c0..x+c1, for every (y, x)
            d = (i[th:th + H] - i[:H]).unfold(1, W, 1)  # (H, Wp+2-W, W): d[:, c] is columns c..c+W
            return (d[:, x1] - d[:, x0]).transpose(0, 1)

        s1, s2 = box(ii[b]), box(ii2[b])
        var = (s2 - s1 * s1 / tpl.n[on, None, None]).clamp(min=1e-3)
        out[b, on] = num / (var.sqrt() * tpl.tnorm[on, None, None])
    out = out.reshape(B, V, K, H, W).amax(1)  # the best of the word's widths
    # the response at (y, x) is for the word centred at screen (y, x): pool to cells
    return F.max_pool2d(out.flatten(0, 1)[:, None], CELL)[:, 0].reshape(B, K, H // CELL, W // CELL)


def instruction_density(maps: torch.Tensor, mask: torch.Tensor, threshold: float = 0.7,
                        reach: tuple[int, int] = (5, 21)) -> torch.Tensor:
    """(B,K,h,w) word maps, (B,K) mask -> (B,h,w): the share of the instruction's words that match strongly
    within `reach` cells (rows, cols) of each cell. Where the instruction itself is shown on screen (a
    task header), nearly all its words match there; a button or label matches one or two."""
    strong = (maps > threshold).float() * mask[..., None, None].float()
    near = F.max_pool2d(strong.flatten(0, 1)[:, None], reach, stride=1,
                        padding=(reach[0] // 2, reach[1] // 2))[:, 0].reshape(strong.shape)
    return near.sum(1) / mask.float().sum(1).clamp(min=1)[:, None, None]


def _any_in(a: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """a (B,K,h,w) bool, first/last (B,K,1,w) column bounds -> (B,K,h,w): a is true somewhere in columns
    first..last (inclusive, clipped to the screen) of the same row."""
    B, K, h, w = a.shape
    cs = F.pad(a.float().cumsum(-1), (1, 0))  # (B,K,h,w+1): cs[..., i] = count in columns < i
    lo, hi = first.clamp(0, w).long().expand(B, K, h, w), (last + 1).clamp(0, w).long().expand(B, K, h, w)
    return (cs.gather(-1, hi) - cs.gather(-1, lo)) > 0.5


def instruction_echo(maps: torch.Tensor, widths: torch.Tensor, mask: torch.Tensor, threshold: float = 0.85,
                     gap_px: tuple[int, int] = (1, 12), spread: int = 10, wrap: tuple[int, int] = (3, 5)) -> torch.Tensor:
    """(B,K,h,w) word maps, (B,K) word widths in px, (B,K) mask -> (B,h,w) bool: the cells where the
    instruction itself is written out (a task header), so that its words are not taken for targets.
    A cell is echo when word k matches there and word k+1 matches to its right on the same line, where
    the next word would be written (centres apart by half of each word's width plus a space, maybe a
    quote: `gap_px`), or word k+2 does, past word k+1 (a quoted word matches less well), or the same
    to its left. A button or label that shows one instruction word has no such neighbour. The echo then
    spreads `spread` cells left and right along its line, over words that match less well (a quoted one).
    On the playground's first screens (150 of them, six tasks) this found the headers and never a target;
    at threshold 0.7 short words ("in", "the") also paired up by chance in a row of tabs."""
    B, K, h, w = maps.shape
    echo = torch.zeros(B, h, w, dtype=torch.bool)
    strong = (maps > threshold) & mask[..., None, None].bool()
    near_rows = F.max_pool2d(strong.float().flatten(0, 1)[:, None], (3, 1), stride=1, padding=(1, 0))
    near_rows = near_rows[:, 0].reshape(B, K, h, w) > 0  # a word one cell up or down still counts as on the line
    ends = F.pad(widths.float().cumsum(1), (1, 0))  # (B,K+1): widths of words 0..k-1
    x = torch.arange(w)
    for j in (1, 2):  # word k and word k+j
        if K <= j:
            break
        left, right = strong[:, :-j], near_rows[:, j:]  # (B,K-j,h,w)
        between = ends[:, j:K] - ends[:, 1:K - j + 1]  # (B,K-j) widths of the words between them
        centre = (widths[:, :-j] + widths[:, j:]).float() / 2 + between  # px between centres, less the gaps
        lo, hi = ((centre + j * gap_px[0]) / CELL).floor(), ((centre + j * gap_px[1]) / CELL).ceil()
        follows = _any_in(right, x + lo[..., None, None], x + hi[..., None, None])  # word k+j at (y, x+lo..x+hi)
        precedes = _any_in(left, x - hi[..., None, None], x - lo[..., None, None])  # word k at (y, x-hi..x-lo)
        echo |= (left & follows).any(1) | (strong[:, j:] & precedes).any(1)
    # A header that wraps can leave one word alone on its next line ("Choose falcon and click" / "Submit."),
    # with no neighbour on that line to pair with: word k+1 is echo too where it starts a line `wrap` rows
    # below word k's echo and to the left of it (a left-aligned paragraph goes back left). Twice, for a
    # third line. Checked on all 16 playground tasks (25 screens each): no oracle click (762) is on the echo.
    for _ in range(2):
        prev = strong[:, :-1] & echo[:, None]  # (B,K-1,h,w) word k, in the echo
        right = _any_in(prev, x + 1, torch.full_like(x, w - 1))  # word k's echo strictly right of the column
        above = torch.zeros_like(right)
        for dy in range(wrap[0], wrap[1] + 1):  # the line above, seen from the line below
            above[:, :, dy:] |= right[:, :, :-dy]
        echo = echo | (strong[:, 1:] & above).any(1)
    return F.max_pool2d(echo.float()[:, None], (3, 2 * spread + 1), stride=1, padding=(1, spread))[:, 0] > 0
