"""Typed batches the trainer is handed (STYLE.md 8). Observations and actions are opaque to the
trainer: it only indexes them (`take`) and hands them back to the model's `evaluate`."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np
import torch


class Evaluation(NamedTuple):
    logp: torch.Tensor  # (B,) log pi(a|s) of the given actions
    entropy: torch.Tensor  # (B,)
    value: torch.Tensor  # (B,)
    state: torch.Tensor  # (B,D) state embedding (world-model input)
    action_features: torch.Tensor  # (B,F) what the action did, for the world model
    success_logit: torch.Tensor | None = None  # (B,) the success map's logit where the action pointed
    affordance_logit: torch.Tensor | None = None  # (B,) the affordance map's logit where the action pointed


class ActorCritic(Protocol):
    def evaluate(self, obs: Any, actions: Any) -> Evaluation: ...


class PPOBatch(NamedTuple):
    obs: Any
    actions: Any
    old_logp: torch.Tensor  # (B,)
    old_value: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    next_state: torch.Tensor  # (B,D) embedding of the next screen, seen while acting
    changed: torch.Tensor  # (B,) 1.0 when the action changed the screen
    has_next: torch.Tensor  # (B,) 1.0 when next_state is real (not past the end of the rollout)
    outcome: torch.Tensor | None = None  # (B,) 1/0 the episode's success after a pointer action, -1 unknown/none
    pointer: torch.Tensor | None = None  # (B,) 1.0 for pointer actions (the affordance map's rows; `changed` its label)


class MapBatch(NamedTuple):
    """Replayed pointer actions with their episode's outcome: the success map's classification targets."""

    obs: Any
    actions: Any
    outcome: torch.Tensor  # (B,) 1.0 success, 0.0 failure


class SILBatch(NamedTuple):
    """Self-imitation: the agent's own past steps that led to success, with the return that followed."""

    obs: Any
    actions: Any
    returns: torch.Tensor  # (B,)


def take(x: Any, idx: torch.Tensor | np.ndarray) -> Any:
    """Rows `idx` of a tensor, array, list, dict or NamedTuple of those (None stays None)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx)]
    if isinstance(x, np.ndarray):
        return x[np.asarray(idx)]
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(take(v, idx) for v in x))
    if isinstance(x, dict):
        return {k: take(v, idx) for k, v in x.items()}
    if isinstance(x, list):
        return [x[int(i)] for i in idx]
    raise TypeError(f"cannot index {type(x).__name__}")


def size(x: Any) -> int:
    if isinstance(x, (torch.Tensor, np.ndarray, list)):
        return len(x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return size(x[0])
    if isinstance(x, dict):
        return size(next(iter(x.values())))
    raise TypeError(f"no length for {type(x).__name__}")
