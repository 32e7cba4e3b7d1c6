"""Shrink-and-perturb (Ash & Adams 2020; as a continual-learning plasticity mechanism, Dohare et al. 2024):
after an update every weight matrix shrinks by a small fraction `rate` and gets fresh noise at its initial
scale, sized so that a weight nothing trains keeps its initial variance:

    W <- (1 - rate) * W + sqrt(1 - (1 - rate)^2) * N(0, std0(W))

Weights cannot grow without bound, and what learning no longer uses drifts back towards a fresh random
initialisation (its correlation with the old weights decays as (1 - rate)^updates), so a task learned late
starts from a network that can still change. Vectors (biases, norms, gains) are left alone.
"""

from __future__ import annotations

import torch
from torch import nn


class ShrinkPerturb:
    def __init__(self, modules: list[nn.Module], rate: float):
        self.rate = rate
        self.noise = (1 - (1 - rate) ** 2) ** 0.5
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad and p.dim() >= 2]
        self.std0 = [float(p.detach().std()) if p.numel() > 1 else 0.0 for p in self.params]  # initial scale

    @torch.no_grad()
    def __call__(self) -> None:
        if self.rate <= 0:
            return
        for p, s in zip(self.params, self.std0):
            p.mul_(1 - self.rate).add_(torch.randn_like(p), alpha=self.noise * s)
