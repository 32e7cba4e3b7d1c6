"""Capacity check (a diagnostic, never part of the agent's learning): can the policy network learn a
task at all when told the answer? Supervised training on oracle actions from the playground, then
greedy success on unseen seeds. If this fails, the architecture is wrong; if it passes and RL does
not, the learning signal is the problem.

    python -m agent.capacity --tasks click-button --samples 2000 --steps 400
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.learner import Agent, AgentConfig, ObsBatch
from agent.policy import ActionBatch, History
from squirrel import interrupt


@dataclass
class CapacityConfig:
    """Supervised capacity check of the policy on oracle actions (diagnostic only)."""

    tasks: str = "click-button"
    """Comma-separated playground tasks."""
    samples: int = 2000
    """Oracle (screen, action) pairs to collect for training."""
    steps: int = 400
    """Optimiser steps."""
    batch: int = 32
    """Batch size."""
    eval_episodes: int = 100
    """Greedy episodes on unseen seeds, per task."""
    seed: int = 0
    """Random seed."""
    json: str = ""
    """Write results here."""
    agent: AgentConfig = field(default_factory=AgentConfig)


def collect(env, tasks, n, seed0, policy):
    """n oracle steps: (frames, instructions, actions, what the policy is told of each step's episode so far)."""
    frames, instr, acts, hists = [], [], [], []
    ep = 0
    while len(frames) < n:
        task = tasks[ep % len(tasks)]
        obs, _ = env.reset(seed=seed0 + ep, options={"task": task})
        ep += 1
        hist = History()
        while True:
            a = env.unwrapped.oracle_action()
            if a is None:
                break
            frames.append(obs["screen"])
            instr.append(obs["instruction"])
            acts.append(a)
            hists.append(hist.features())
            obs, _, term, trunc, _ = env.step(a)
            hist.after(policy.as_batch(a), not np.array_equal(obs["screen"], frames[-1]))
            if term or trunc:
                break
    return frames[:n], instr[:n], acts[:n], hists[:n]


def evaluate(agent, env, task, episodes, seed0):
    wins = 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed0 + i, options={"task": task})
        hist = History()
        while True:
            a = agent.act(agent.obs_batch(obs, hist), greedy=True)[0]
            before = obs["screen"]
            obs, _, term, trunc, info = env.step(agent.policy.to_action(a))
            hist.after(a, not np.array_equal(obs["screen"], before))
            if term or trunc:
                break
        wins += info.get("success") is True
    return wins / episodes


def main(argv: list[str] | None = None, prog: str = "capacity") -> int:
    import sys

    from agent.learn_cli import make_task_env
    from squirrel.config import parse

    cfg = parse(CapacityConfig, sys.argv[1:] if argv is None else argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t]
    torch.manual_seed(cfg.seed)
    agent = Agent(cfg.agent)
    env = make_task_env(tasks, None)
    env.get_wrapper_attr("config").max_actions_per_s = 1e6
    try:
        t0 = time.time()
        frames, instr, acts, hists = collect(env, tasks, cfg.samples, 1_000_000, agent.policy)
        idx = [agent.policy.from_action(a) for a in acts]
        A = {k: torch.tensor([d[k] for d in idx]) for k in idx[0]}
        frames = np.stack(frames)
        print(f"collected {len(frames)} oracle steps in {time.time() - t0:.0f}s")
        before = {t: evaluate(agent, env, t, cfg.eval_episodes // 2, 0) for t in tasks}
        rng = np.random.default_rng(cfg.seed)
        log = []
        t0 = time.time()
        for step in range(1, cfg.steps + 1):
            interrupt.check()
            b = rng.integers(0, len(frames), cfg.batch)
            ab = ActionBatch(*(A[k][b] for k in ActionBatch._fields))
            ev = agent.evaluate(ObsBatch(frames[b], [instr[i] for i in b], history=[hists[i] for i in b]), ab)
            loss = -ev.logp.mean()
            agent.optimizer.zero_grad()
            loss.backward()
            agent.optimizer.step()
            if step % 50 == 0:
                log.append([step, float(loss)])
                print(f"step {step} nll {float(loss):.3f} ({time.time() - t0:.0f}s)", flush=True)
        after = {t: evaluate(agent, env, t, cfg.eval_episodes, 0) for t in tasks}
        out = {"tasks": tasks, "samples": len(frames), "steps": cfg.steps, "before": before, "after": after, "loss": log,
               "encoder": cfg.agent.encoder, "reading": cfg.agent.reading, "seconds": time.time() - t0}
        print(json.dumps({"before": before, "after": after}))
        if cfg.json:
            with open(cfg.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
