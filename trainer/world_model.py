"""A world model: from the state embedding and what the action did, predict the next state
embedding and whether the screen will change. It learns from every transition (no reward needed);
its prediction error is the curiosity bonus, and its loss also trains the encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WorldModel(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim + action_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.next_state = nn.Linear(hidden, state_dim)
        self.change = nn.Linear(hidden, 1)

    def forward(self, state: torch.Tensor, action_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,S), (B,A) -> predicted next state (B,S), logit that the screen changes (B,)."""
        h = self.net(torch.cat([state, action_features], -1))
        return state + self.next_state(h), self.change(h)[..., 0]

    @staticmethod
    def errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample prediction error (B,): 1 - cosine similarity to the (detached) target."""
        return 1.0 - F.cosine_similarity(pred, target.detach(), dim=-1)
