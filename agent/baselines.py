"""The two baselines of `squirrel bench learn`: a random agent and stable-baselines3 PPO.

Both run on the same gated env as Squirrel (`agent.learn_cli.make_task_env`) and report every
finished episode as `on_episode(success, length)`, which the bench turns into the same learning
curve as `squirrel learn` (`agent.learn_cli.Curve`).

SB3 cannot take our observation (it has a Text part) nor our composite action (a Dict with boxes),
so two wrappers translate:
- `GoalObservation`: Dict(screen = the task window's pixels, uint8 H×W×3; goal = the instruction's
  MiniLM sentence embedding, float32 (384,)). The cursor is dropped.
- `MultiDiscreteAction`: MultiDiscrete([9, 40, 53, 40, 53, 20, 16, 4]) for a 160×210 window =
  (type, x cell, y cell, x2 cell, y2 cell, key, span start, span length). Cells are 4 px; a cell c
  becomes the pixel c*4+2 clipped to the window; the typed span is words (start, start+length).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agent.actions import MAX_WORDS, ActionType

OnEpisode = Callable[[bool | None, int], None]  # (info["success"] at the episode's end, its length in steps)


class RandomAgent:
    """Samples uniformly from the env's action space every step; it never learns (the floor of a curve)."""

    def __init__(self, action_space: gym.Space, seed: int):
        self.action_space = action_space
        self.action_space.seed(seed)

    def act(self, obs) -> dict:
        return self.action_space.sample()


def run_random(env: gym.Env, steps: int, seed: int, on_episode: OnEpisode) -> int:
    """Act randomly for exactly `steps` env steps (a last unfinished episode is not reported)."""
    agent, rng = RandomAgent(env.action_space, seed), np.random.default_rng(seed)
    done_steps = 0
    while True:
        obs, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
        length, over = 0, False
        while not over:
            if done_steps >= steps:
                return done_steps
            obs, _, terminated, truncated, info = env.step(agent.act(obs))
            done_steps, length, over = done_steps + 1, length + 1, terminated or truncated
        on_episode(info.get("success"), length)


class GoalObservation(gym.ObservationWrapper):
    """screen + goal: the instruction text replaced by its MiniLM sentence embedding (cached per instruction)."""

    def __init__(self, env: gym.Env, encoder=None):
        super().__init__(env)
        if encoder is None:
            from perception.text import InstructionEncoder

            encoder = InstructionEncoder()
        self.encoder = encoder
        self.observation_space = spaces.Dict({
            "screen": env.observation_space["screen"],
            "goal": spaces.Box(-1.0, 1.0, shape=(encoder.dim,), dtype=np.float32),  # unit norm
        })

    def observation(self, obs: dict) -> dict:
        goal = self.encoder.encode(obs["instruction"]).sentence.numpy().astype(np.float32)
        return {"screen": obs["screen"], "goal": np.clip(goal, -1.0, 1.0)}


class MultiDiscreteAction(gym.ActionWrapper):
    """MultiDiscrete([types, x cells, y cells, x2 cells, y2 cells, keys, span starts, span lengths]) -> our Dict action."""

    def __init__(self, env: gym.Env, cell: int = 4, span_starts: int = 16, span_lengths: int = 4):
        super().__init__(env)
        space = env.action_space
        hi = space["point"].high  # (width-1, height-1)
        self.width, self.height, self.cell = int(hi[0]) + 1, int(hi[1]) + 1, cell
        nx, ny = math.ceil(self.width / cell), math.ceil(self.height / cell)
        self.action_space = spaces.MultiDiscrete(
            [len(ActionType), nx, ny, nx, ny, space["key"].n, span_starts, span_lengths])

    def point(self, cx: int, cy: int) -> np.ndarray:
        """The pixel at the centre of cell (cx, cy), clipped to the window."""
        half = self.cell // 2
        return np.array([min(cx * self.cell + half, self.width - 1), min(cy * self.cell + half, self.height - 1)],
                        dtype=np.int64)

    def action(self, a) -> dict:
        t, x, y, x2, y2, key, start, length = (int(v) for v in a)
        return {"type": t, "point": self.point(x, y), "point2": self.point(x2, y2), "key": key,
                "span": np.array([start, min(start + length, MAX_WORDS - 1)], dtype=np.int64)}


def sb3_env(env: gym.Env, encoder=None) -> gym.Env:
    """Our env as SB3 can take it."""
    return MultiDiscreteAction(GoalObservation(env, encoder))


def make_sb3_ppo(env: gym.Env, seed: int, n_steps: int = 128, batch_size: int = 64, encoder=None):
    """SB3 PPO with `MultiInputPolicy` on the wrapped env, SB3's own default hyperparameters except the rollout.

    SB3's `CnnPolicy` takes a single image Box only; `MultiInputPolicy` is the same actor-critic for a
    Dict observation: its `CombinedExtractor` runs SB3's NatureCNN (256 features) on the screen and
    flattens the 384-d goal beside it, then separate 64-64 tanh MLPs for policy and value.
    Hyperparameters are PPO's class defaults (lr 3e-4, 10 epochs, gamma 0.99, GAE lambda 0.95,
    clip 0.2, no entropy bonus, vf_coef 0.5, max_grad_norm 0.5, advantage normalisation) except
    `n_steps`, the rollout length (SB3's 2048 would give 10 updates in a 20k-step budget), and
    `batch_size`, which must divide it (SB3's default 64 divides the default 128).
    """
    from stable_baselines3 import PPO

    if n_steps % batch_size:
        raise ValueError(f"batch_size {batch_size} must divide n_steps {n_steps}")
    return PPO("MultiInputPolicy", sb3_env(env, encoder), n_steps=n_steps, batch_size=batch_size, seed=seed, device="cpu",
               verbose=0)


def _episode_callback(steps: int, on_episode: OnEpisode):
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCallback(BaseCallback):
        """Reports each finished episode's success; stops learning at exactly `steps` env steps."""

        def _init_callback(self) -> None:
            self.lengths = np.zeros(self.training_env.num_envs, dtype=np.int64)

        def _on_step(self) -> bool:
            for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"])):
                self.lengths[i] += 1
                if done:
                    on_episode(info.get("success"), int(self.lengths[i]))
                    self.lengths[i] = 0
            return self.num_timesteps < steps

    return EpisodeCallback()


def run_sb3_ppo(env: gym.Env, steps: int, seed: int, on_episode: OnEpisode, n_steps: int = 128,
                batch_size: int = 64, encoder=None) -> int:
    """Learn with SB3 PPO for exactly `steps` env steps; returns the env steps taken."""
    model = make_sb3_ppo(env, seed, n_steps, batch_size, encoder)
    model.learn(total_timesteps=steps, callback=_episode_callback(steps, on_episode))
    return int(model.num_timesteps)
