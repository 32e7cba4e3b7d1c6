"""Goal-text shaping: credit for making the instruction's quoted text appear on the screen, when it appears.

Entering text is several right actions in a row (focus the field, type the right span, confirm), and reward
alone only comes after the last of them, so a first success is rarely sampled. But the screen shows progress:
the quoted phrase appears where it was typed. This reads that by normalised cross-correlation with the word
rendered as agent/instruction.py renders it, cropped to its ink and at full resolution (agent/reading.py's match
works per 4-px cell on the padded canvas, too coarse to count separate places), and turns it into a potential-based shaping reward (Ng, Harada & Russell 1999):

    F(s, a, s') = coef * (gamma^k * phi(s') - phi(s)),   phi(terminal) = 0

phi(s) is the share of the quoted words shown on the screen in more places than on the episode's first screen
(a task header shows the instruction, and so the phrase, once from the start). Shaping of this form leaves
the optimal policy unchanged (its sum over an episode is -coef * phi(s0) = 0 whatever is done), it only moves
the credit earlier: typing the phrase is rewarded when it shows, confirming it gets the rest. Nothing here
knows any task: quotes mark the text to enter in written instructions (agent/instruction.py); instructions
without quotes get no shaping and cost nothing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from agent.instruction import InstructionCache

THRESHOLD = 0.7  # normalised cross-correlation at which a word counts as shown there


def ink_template(pixels: np.ndarray) -> torch.Tensor:
    """A rendered word (h,w,3) uint8, black on white -> its ink as (h',w') float, cropped to the ink's box. Tight:
    a typed word sits between a field's borders and beside the text cursor, which a padded canvas would include."""
    t = 1.0 - torch.from_numpy(np.array(pixels)).float().mean(-1) / 255.0
    rows, cols = (t > 0.2).any(1).nonzero()[:, 0], (t > 0.2).any(0).nonzero()[:, 0]
    return t[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


def places(frame: np.ndarray, template: torch.Tensor) -> int:
    """How many separate places of the frame (H,W,3) uint8 show the word: peaks of the normalised
    cross-correlation above THRESHOLD, one per template-sized neighbourhood."""
    s = 1.0 - torch.from_numpy(np.array(frame)).float().mean(-1) / 255.0  # (H,W), ink high
    H, W = s.shape
    th, tw = template.shape
    if th > H or tw > W:
        return 0
    t = template - template.mean()
    n = th * tw
    num = torch.fft.irfft2(torch.fft.rfft2(s) * torch.fft.rfft2(t, s=(H, W)).conj(), s=(H, W))[: H - th + 1, : W - tw + 1]
    ii = F.pad(s, (1, 0, 1, 0)).cumsum(0).cumsum(1)
    ii2 = F.pad(s * s, (1, 0, 1, 0)).cumsum(0).cumsum(1)

    def box(i):  # sums over every th x tw window (top-left at y, x)
        return i[th:, tw:] - i[:-th, tw:] - i[th:, :-tw] + i[:-th, :-tw]

    var = (box(ii2) - box(ii) ** 2 / n).clamp(min=1e-3)
    ncc = num / (var.sqrt() * t.norm().clamp(min=1e-4))
    ys, xs = (ncc > THRESHOLD).nonzero(as_tuple=True)  # usually a few dozen cells: greedy NMS on them
    kept: list[tuple[int, int]] = []
    for i in ncc[ys, xs].argsort(descending=True).tolist():
        y, x = int(ys[i]), int(xs[i])
        if all(abs(y - ky) >= th or abs(x - kx) >= tw for ky, kx in kept):
            kept.append((y, x))
    return len(kept)


class GoalText:
    """The shaping of one episode at a time: start(first frame, instruction), then shape() after every step."""

    def __init__(self, instructions: InstructionCache, coef: float, gamma: float):
        self.instructions, self.coef, self.gamma = instructions, coef, gamma
        self._phi = 0.0
        self._templates: list[torch.Tensor] = []  # the quoted words' ink, this episode
        self._base = np.zeros(0)

    def _places(self, frame: np.ndarray) -> np.ndarray:
        return np.array([places(frame, t) for t in self._templates])

    def start(self, frame: np.ndarray, instruction: str) -> None:
        self._phi = 0.0
        if self.coef <= 0:
            self._templates = []
            return
        f = self.instructions(instruction)
        self._templates = [ink_template(f.word_pixels[k]) for k in f.quoted.nonzero()[:, 0].tolist()]
        self._base = self._places(frame)

    def shape(self, next_frame: np.ndarray, ended: bool, steps: int = 1) -> float:
        """The shaping reward of the step that led to `next_frame` (`ended`: the episode is over, phi = 0;
        `steps`: env steps the decision took, as its discount)."""
        if not self._templates:
            return 0.0
        phi = 0.0 if ended else self.phi(next_frame)
        f = self.coef * (self.gamma ** steps * phi - self._phi)
        self._phi = phi
        return f

    def phi(self, frame: np.ndarray) -> float:
        if not self._templates:
            return 0.0
        return float((self._places(frame) > self._base).mean())
