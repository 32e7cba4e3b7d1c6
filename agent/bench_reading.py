"""`squirrel bench reading`: does the agent learn to click the button labelled WORD, from reward alone?

A fast synthetic one-step env (no X server): the playground's click-button screen drawn by agent/screens.py
(yellow instruction header, 3-5 Fusion-style buttons, DejaVu Sans 11 px), 'Click the "WORD" button.'; the
episode ends at the first action, success = a CLICK inside the named button (+1, else -1). The real Agent and
Learner learn it (PPO + self-imitation + world model, encoder included), one episode per env step.

1. Capacity: the policy with the prior and the visual query, trained supervised on the oracle click (fresh
   synthetic screens), then greedy success on unseen screens. Below 95% the architecture is wrong.
2. From reward alone, side by side, each from a fresh agent:
     baseline      no prior, no visual query (random-init encoder + MiniLM goal: the NOTES.md baseline)
     visual_query  the instruction's words rendered as pixels and matched through the encoder's own conv stem
                   (the policy's learned matcher; the fixed pixel-space match off), random init
     prior         the encoder from `squirrel pretrain`, no visual query
     both          prior + visual query
     pixel_query   (optional) the agent's default reading: fixed pixel-space match, no learned matcher
   Each: a greedy-success curve on fixed screens, episodes_to_90, final success, and success on a
   vocabulary held out from both pretraining and training (agent/screens.py HELDOUT_WORDS).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agent.actions import Action, ActionType, action_space, observation_space
from agent.pretrain import PretrainConfig, pretrain
from agent.screens import HEIGHT, HELDOUT_WORDS, TRAIN_WORDS, WIDTH, click_button_screen
from squirrel.errors import UserError

VARIANTS = {  # name -> (prior, visual query, pixel-space match)
    "baseline": (False, False, False),
    "visual_query": (False, True, False),
    "prior": (True, False, False),
    "both": (True, True, False),
    "pixel_query": (False, False, True),
}


class ClickLabelEnv(gym.Env):
    """One-step "click the button labelled WORD" on synthetic playground screens (3-5 buttons)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, vocab=TRAIN_WORDS, n_min: int = 3, n_max: int = 5, render_mode: str | None = None):
        self.vocab, self.n_min, self.n_max, self.render_mode = tuple(vocab), n_min, n_max, render_mode
        self.observation_space = observation_space(WIDTH, HEIGHT)
        self.action_space = action_space(WIDTH, HEIGHT)

    def window_rect(self):
        return (0, 0, WIDTH, HEIGHT)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.frame, self.instruction, self.target, self.buttons = click_button_screen(self.np_random, self.vocab,
                                                                                      self.n_min, self.n_max)
        return self._obs(), {"task": "click-label", "success": None}

    def oracle_action(self) -> Action:
        x0, y0, x1, y1 = self.target
        return Action(ActionType.CLICK, (x0 + x1) // 2, (y0 + y1) // 2)

    def step(self, action):
        a = action if isinstance(action, Action) else Action.from_gym(action)
        x0, y0, x1, y1 = self.target
        success = a.type == ActionType.CLICK and x0 <= a.x < x1 and y0 <= a.y < y1
        return self._obs(), 1.0 if success else -1.0, True, False, {"task": "click-label", "success": bool(success)}

    def render(self):
        return self.frame.copy()

    def _obs(self):
        return {"screen": self.frame.copy(), "instruction": self.instruction, "cursor": np.array([-1, -1], np.int64)}


@dataclass
class BenchReadingConfig:
    """Learning to click the button labelled WORD: capacity, then from reward alone with and without the prior."""

    variants: str = "baseline,visual_query,prior,both"
    """Comma-separated: baseline, visual_query, prior, both, pixel_query."""
    episodes: int = 5000
    """Training episodes (= env steps) per variant."""
    eval_every: int = 500
    """Episodes between curve points."""
    eval_episodes: int = 100
    """Greedy episodes per curve point (the same screens every time)."""
    final_episodes: int = 300
    """Greedy episodes for final_success and for heldout_vocab_success (unseen screens)."""
    vocab: int = 20
    """Training vocabulary: the first N playground words."""
    capacity_steps: int = 400
    """Supervised steps of the capacity check (0: skip it)."""
    capacity_batch: int = 32
    """Screens per supervised step."""
    seed: int = 0
    """Random seed."""
    threads: int = 1
    """torch CPU threads."""
    encoder: str = "squirrel-vit-a16-conv"
    """Screen encoder config (the prior is made for it)."""
    json: str = ""
    """Write the results here."""
    progress: bool = True
    """Show a progress bar."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def make_agent(cfg: BenchReadingConfig, variant: str, prior_path: str, text_encoder):
    from agent.learner import Agent, AgentConfig

    use_prior, query, pixel = VARIANTS[variant]
    acfg = AgentConfig(encoder=cfg.encoder, pretrained=prior_path if use_prior else "", reading=query or pixel,
                       learned_matcher=query, threads=cfg.threads)
    agent = Agent(acfg, text_encoder=text_encoder)
    if query:
        agent.policy.use_pixel_match(False)
    return agent


def greedy(agent, env, seeds) -> float:
    from agent.learner import greedy_episodes

    wins, _ = greedy_episodes(agent, env, "click-label", seeds)
    return wins / max(len(seeds), 1)


def capacity(cfg: BenchReadingConfig, prior_path: str, text_encoder, vocab, log) -> dict:
    """Supervised on the oracle click, fresh screens every step; then greedy success on unseen screens."""
    from agent.learner import ObsBatch
    from agent.policy import ActionBatch

    torch.manual_seed(cfg.seed)
    agent = make_agent(cfg, "both", prior_path, text_encoder)
    env, rng = ClickLabelEnv(vocab), np.random.default_rng(cfg.seed + 1)
    t0, losses = time.time(), []
    for step in range(1, cfg.capacity_steps + 1):
        frames, instr, acts = [], [], []
        for _ in range(cfg.capacity_batch):
            obs, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
            frames.append(obs["screen"])
            instr.append(obs["instruction"])
            acts.append(agent.policy.from_action(env.oracle_action()))
        ab = ActionBatch(*(torch.tensor([d[k] for d in acts]) for k in ActionBatch._fields))
        loss = -agent.evaluate(ObsBatch(np.stack(frames), instr), ab).logp.mean()
        agent.optimizer.zero_grad()
        loss.backward()
        agent.optimizer.step()
        if step % 50 == 0 or step == cfg.capacity_steps:
            losses.append([step, round(loss.item(), 4)])
            log(f"capacity step {step} nll {loss.item():.3f} ({time.time() - t0:.0f}s)")
    seeds = range(2_000_000, 2_000_000 + cfg.final_episodes)
    out = {"variant": "both", "steps": cfg.capacity_steps, "batch": cfg.capacity_batch, "loss": losses,
           "success": greedy(agent, env, seeds), "heldout_vocab_success": greedy(agent, ClickLabelEnv(HELDOUT_WORDS), seeds),
           "seconds": round(time.time() - t0, 1)}
    out["passed"] = out["success"] >= 0.95
    return out


def run_variant(cfg: BenchReadingConfig, variant: str, prior_path: str, text_encoder, vocab, bar, log) -> dict:
    from agent.learner import Learner

    torch.manual_seed(cfg.seed)
    agent = make_agent(cfg, variant, prior_path, text_encoder)
    env, eval_env, held_env = ClickLabelEnv(vocab), ClickLabelEnv(vocab), ClickLabelEnv(HELDOUT_WORDS)
    learner = Learner(agent, env, ["click-label"], seed=cfg.seed)
    curve_seeds = range(1_000_000, 1_000_000 + cfg.eval_episodes)
    t0 = time.time()
    curve = [[0, greedy(agent, eval_env, curve_seeds)]]
    while learner.episodes < cfg.episodes:
        before = learner.episodes
        learner.run(learner.env_steps + min(cfg.eval_every, cfg.episodes - learner.episodes))
        if bar is not None:
            bar.update(learner.episodes - before)
        curve.append([learner.episodes, greedy(agent, eval_env, curve_seeds)])
        log(f"{variant}: {learner.episodes} episodes, greedy success {curve[-1][1]:.2f} ({time.time() - t0:.0f}s)")
    train_s = time.time() - t0
    final_seeds = range(3_000_000, 3_000_000 + cfg.final_episodes)
    to90 = next((e for e, s in curve if s >= 0.9), None)
    return {"variant": variant, "task": "click-label", "curve": curve, "final_success": greedy(agent, eval_env, final_seeds),
            "episodes_to_90": to90, "heldout_vocab_success": greedy(agent, held_env, final_seeds),
            "episodes": learner.episodes, "train_seconds": round(train_s, 1),
            "episodes_per_s": round(learner.episodes / max(train_s, 1e-9), 1)}


def main(argv: list[str] | None = None, prog: str = "bench reading") -> int:
    from squirrel.config import parse

    cfg = parse(BenchReadingConfig, sys.argv[1:] if argv is None else argv, prog)
    variants = [v for v in cfg.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UserError(f"unknown variant {unknown[0] if unknown else '(none)'}; choose from {', '.join(VARIANTS)}")
    if not 1 <= cfg.vocab <= len(TRAIN_WORDS) or cfg.episodes < 1 or cfg.eval_every < 1:
        raise UserError(f"--vocab must be 1..{len(TRAIN_WORDS)}; --episodes and --eval-every at least 1")
    torch.set_num_threads(cfg.threads)
    vocab = TRAIN_WORDS[: max(cfg.vocab, 5)]
    log = print
    pcfg = replace(cfg.pretrain, encoder=cfg.encoder, threads=cfg.threads, progress=cfg.progress and cfg.pretrain.progress)
    needs_prior = any(VARIANTS[v][0] for v in variants) or cfg.capacity_steps > 0
    prior = pretrain(pcfg, log) if needs_prior else None
    from perception.text import InstructionEncoder

    text = InstructionEncoder()
    result = {"runs": [], "pretrain_minutes": prior["minutes"] if prior else None,
              "pretrain": {k: prior.get(k) for k in ("path", "config_hash", "sha256", "reused", "locate_acc",
                                                     "heldout_click_button_acc", "heldout_click_button_body_acc",
                                                     "final_loss")} if prior else None,
              "config": {k: v for k, v in vars(cfg).items() if k != "pretrain"}, "vocab": list(vocab),
              "heldout_vocab": list(HELDOUT_WORDS), "finished": False}

    def write():
        if cfg.json:
            Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json).write_text(json.dumps(result, indent=1))

    bar = None
    try:
        if cfg.capacity_steps > 0:
            result["capacity"] = capacity(cfg, prior["path"], text, vocab, log)
            c = result["capacity"]
            log(f"capacity: supervised {c['success']:.3f} (held-out vocab {c['heldout_vocab_success']:.3f})"
                + ("" if c["passed"] else " -- below 95%: the architecture cannot learn this task"))
            write()
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.episodes * len(variants), unit="ep", desc="bench reading", dynamic_ncols=True,
                       file=sys.stderr)
        for v in variants:
            r = run_variant(cfg, v, prior["path"] if prior else "", text, vocab, bar, log if bar is None else bar.write)
            result["runs"].append(r)
            log(f"{v}: final {r['final_success']:.3f}, episodes_to_90 {r['episodes_to_90']}, "
                f"held-out vocab {r['heldout_vocab_success']:.3f}, {r['episodes_per_s']} episodes/s")
            write()
        result["finished"] = True
    finally:
        if bar is not None:
            bar.close()
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
