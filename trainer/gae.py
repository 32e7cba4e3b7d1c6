"""Generalised advantage estimation with `terminated` kept apart from `truncated`.

A terminated step has no future (bootstrap 0). A truncated step (step budget) does: it bootstraps
from the value of the observation it ended on. An episode boundary of either kind stops the
advantage from flowing backwards across it.

`gamma` may be a (T,) tensor: a step that lasted k env steps (an option, e.g. a tool call) discounts by gamma**k.
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
        next_values: torch.Tensor, gamma: float | torch.Tensor = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """All (T,). next_values[t] = V(s_{t+1}) (the final observation's value where an episode ended).
    Returns (advantages, returns), both (T,)."""
    T = rewards.shape[0]
    adv = torch.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        g = gamma[t] if isinstance(gamma, torch.Tensor) else gamma
        boot = 0.0 if terminated[t] else next_values[t]
        delta = rewards[t] + g * boot - values[t]
        ended = bool(terminated[t] or truncated[t])
        last = delta + (0.0 if ended else g * lam * last)
        adv[t] = last
    return adv, adv + values
