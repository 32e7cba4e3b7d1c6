"""One learning step: PPO (clipped policy loss, value loss, entropy) + self-imitation + world model,
summed, and one optimiser step over every module (encoder included). Reads top to bottom.

    batch (B samples) -> model.evaluate -> logp, entropy, value, state, action features
    ppo   = -min(r*A, clip(r)*A) + vf_coef*(V-R)^2 - ent_coef*H          r = exp(logp - old_logp)
    sil   = -logp*max(R-V,0) + 0.5*sil_vf*max(R-V,0)^2                   (own successful steps)
    bc    = -logp                                                        (the same steps, bc_coef > 0)
    map   = BCE(success logit where it pointed, the episode's outcome)   (pointer actions, success map on;
                                                                        this rollout's and replayed ones)
    react = BCE(affordance logit where it pointed, changed)             (pointer actions, affordance map on)
    wm    = (1 - cos(pred_next, next_state)) + BCE(change_logit, changed)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.batches import ActorCritic, MapBatch, PPOBatch, SILBatch, size, take
from trainer.world_model import WorldModel


@dataclass
class PPOConfig:
    lr: float = 3e-4
    """Adam learning rate (encoder, policy and world model together)."""
    clip: float = 0.2
    """PPO ratio clip."""
    epochs: int = 2
    """Passes over each rollout."""
    minibatch: int = 32
    """Samples per optimiser step."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    adv_std_floor: float = 0.3
    """Advantages are normalised per minibatch by max(std, this). While every episode fails, their spread is
    the value estimate's noise, and dividing by it makes that noise a full-size policy step, a random walk
    (0: plain normalisation). Rewards are about 1 in size here, so once episodes differ this changes nothing."""
    sil_coef: float = 1.0
    """Weight of self-imitation on the agent's own successes (0: off)."""
    sil_batch: int = 16
    """Self-imitation samples added to each optimiser step."""
    bc_coef: float = 0.0
    """Weight of plain behaviour cloning on those replayed successes (CLEAR's cloning term: it keeps an earlier
    task's actions even where the value estimate no longer says they beat it; 0: off)."""
    map_coef: float = 1.0
    """Weight of the success and affordance maps' classification losses (agent/policy.py; only with a map on)."""
    map_batch: int = 32
    """Replayed pointer actions (with their outcome) added to the map's loss at each optimiser step."""
    wm_coef: float = 0.5
    """Weight of the world-model loss."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""


def normalise_advantages(adv: torch.Tensor, std_floor: float = 0.0) -> torch.Tensor:
    """(B,) -> (B,) centred, and divided by their spread or by `std_floor`, whichever is larger."""
    if adv.numel() < 2:
        return adv
    return (adv - adv.mean()) / adv.std().clamp(min=max(std_floor, 1e-8))


def ppo_step(model: ActorCritic, wm: WorldModel, opt: torch.optim.Optimizer, batch: PPOBatch, cfg: PPOConfig,
             sil: SILBatch | None = None, replay: MapBatch | None = None) -> dict[str, float]:
    """The losses of one minibatch, then one optimiser step. Returns the loss terms."""
    ev = model.evaluate(batch.obs, batch.actions)
    adv = normalise_advantages(batch.advantages, cfg.adv_std_floor)
    ratio = torch.exp(ev.logp - batch.old_logp)  # (B,)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
    vf = F.mse_loss(ev.value, batch.returns)
    ent = ev.entropy.mean()
    pred, change_logit = wm(ev.state, ev.action_features)
    m = batch.has_next
    wm_err = (WorldModel.errors(pred, batch.next_state) * m).sum() / m.sum().clamp(min=1)
    wm_change = (F.binary_cross_entropy_with_logits(change_logit, batch.changed, reduction="none") * m).sum() / m.sum().clamp(min=1)
    loss = pg + cfg.vf_coef * vf - cfg.ent_coef * ent + cfg.wm_coef * (wm_err + wm_change)
    out = {}
    k = batch.outcome >= 0 if batch.outcome is not None else None  # pointer actions whose outcome is known
    if ev.success_logit is not None and k is not None:
        logits, targets = [ev.success_logit[k]], [batch.outcome[k]]
        if replay is not None:
            logits.append(model.evaluate(replay.obs, replay.actions).success_logit)
            targets.append(replay.outcome)
        logits, targets = torch.cat(logits), torch.cat(targets)
        if targets.numel():
            smap = F.binary_cross_entropy_with_logits(logits, targets)
            loss = loss + cfg.map_coef * smap
            out["success_map"] = float(smap.detach())
    p = batch.pointer.bool() if batch.pointer is not None else None
    if ev.affordance_logit is not None and p is not None and p.any():
        react = F.binary_cross_entropy_with_logits(ev.affordance_logit[p], batch.changed[p])
        loss = loss + cfg.map_coef * react
        out["affordance"] = float(react.detach())
    if sil is not None and cfg.sil_coef > 0 and size(sil.returns) > 0:
        ev_s = model.evaluate(sil.obs, sil.actions)
        gap = (sil.returns - ev_s.value).clamp(min=0)  # only where the past success beats the estimate
        sil_loss = -(ev_s.logp * gap.detach()).mean() + 0.5 * 0.01 * (gap ** 2).mean()
        loss = loss + cfg.sil_coef * sil_loss
        out["sil"] = float(sil_loss.detach())
        if cfg.bc_coef > 0:
            bc = -ev_s.logp.mean()
            loss = loss + cfg.bc_coef * bc
            out["bc"] = float(bc.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    with torch.no_grad():
        approx_kl = float(((ratio - 1) - torch.log(ratio)).mean())
    out.update({k: float(v.detach()) for k, v in dict(loss=loss, pg=pg, vf=vf, entropy=ent, wm=wm_err,
                                                       wm_change=wm_change, grad_norm=gnorm).items()}, kl=approx_kl)
    return out


def ppo_update(model: ActorCritic, wm: WorldModel, opt: torch.optim.Optimizer, batch: PPOBatch, cfg: PPOConfig,
               sil_sampler=None, should_stop=None, map_sampler=None) -> dict[str, float]:
    """`cfg.epochs` passes over the rollout in shuffled minibatches; returns mean loss terms. `should_stop()`
    is asked before each minibatch: a stop ends the update there (each optimiser step is whole). The samplers
    give each step its replayed successes (self-imitation) and replayed pointer outcomes (success map)."""
    n = size(batch.old_logp)
    logs: dict[str, list[float]] = {}
    for _ in range(cfg.epochs):
        perm = torch.randperm(n)
        for i in range(0, n, cfg.minibatch):
            idx = perm[i: i + cfg.minibatch]
            if len(idx) < 2:
                continue
            if should_stop is not None and should_stop():
                return {k: sum(v) / len(v) for k, v in logs.items()}
            sil = sil_sampler(cfg.sil_batch) if sil_sampler is not None else None
            replay = map_sampler(cfg.map_batch) if map_sampler is not None else None
            for k, v in ppo_step(model, wm, opt, take(batch, idx), cfg, sil, replay).items():
                logs.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in logs.items()}
