"""The act-and-learn loop: observe, decide (no gradient, batch 1), act through the gate, record;
every `rollout` steps, one PPO + self-imitation + world-model update of every module (encoder
included). Learning never stops: there is no separate training phase.

Callbacks (STYLE.md 9) see every decision, every finished episode and every update; an episode or update
callback returning False stops the loop.

Outcomes a person gives ("ask the person" tasks: the env says so at reset with `info["ask_person"]`): the
episode's steps are held out of the rollout while it runs; when it ends undecided it waits in `pending`
until `judge()` brings the verdict, then joins the next update whole, its last reward +1 or -1 (PPO's ratio
clip against the stored behaviour log-probabilities covers the lag), and a good one is self-imitated.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from agent.actions import KEYS, ActionType
from agent.instruction import InstructionCache
from agent.policy import N_TYPES, POINTER_IDS, TOOL, ActionBatch, History, Policy
from agent.recall import MAP_SHAPE, MEM_F
from agent.shaping import GoalText
from squirrel import interrupt
from squirrel.errors import UserError
from trainer.batches import Evaluation, MapBatch, PPOBatch, SILBatch
from trainer.gae import gae
from trainer.plasticity import ShrinkPerturb
from trainer.ppo import PPOConfig, ppo_update
from trainer.world_model import WorldModel

_POINTER_IDS = torch.tensor(POINTER_IDS)


class ObsBatch(NamedTuple):
    frames: np.ndarray  # (B,H,W,3) uint8
    instructions: list[str]
    match: list | None = None  # per row: (k_i+m_i,h,w) float16 maps computed while acting (or None): the k_i
    # instruction words' matches (reading), then m_i recalled targets' matches (recall)
    tools: list | None = None  # per row: agent.tools.ToolInputs seen while acting (or None: find them now)
    memory: list | None = None  # per row: (M_i, MEM_F) recalled neighbours' token features (or None: recall now)
    history: list | None = None  # per row: (HISTORY_F+1,) policy.History.features(), or None: the episode's start


@dataclass
class AgentConfig:
    encoder: str = "squirrel-vit-a16-conv"
    """Screen encoder config (perception/configs): the agent's default is the lean conv-stem tower, whose
    stride-4 features the word matcher shares; forward+backward is what limits learning speed here."""
    pretrained: str = "auto"
    """Encoder weights to start from. auto: the reading prior `squirrel pretrain` made for this encoder, when the
    cache has one (else random init, with a note saying how to make it); a path: that local file; empty: random
    init. Whatever it starts from, the encoder keeps training."""
    freeze_encoder: bool = False
    """Freeze the screen encoder (off: it trains with everything else)."""
    reading: bool = True
    """Match rendered instruction words against the screen (the instruction as pixels)."""
    gain_lr: float = 0.01
    """Learning rate of the reading gains (unit-scale scalars; the shared lr would barely move them)."""
    learned_matcher: bool = True
    """Also match the rendered words in the encoder's learned stride-4 features (what the reading prior trains;
    ~15% fewer env steps/s than the fixed pixel match alone, which stays on)."""
    text_prior: bool = True
    """Start out favouring what written instructions mark: a quoted phrase as the text to type, a named key
    ("press Enter") as the key to press (agent/instruction.py); learned gains decide how much to keep trusting them."""
    success_map: bool = False
    """Learn, per patch, whether pointing there now ends in success, from the outcome of pointer actions (a
    classification loss, so a failed click teaches too; `map_replay` keeps replaying them), and add it to the
    point logits by a learned gain (agent/policy.py). Every click of a success is labelled a success, of a
    failure only its last click (`pointer_outcomes`). Off by default: it helps where one click decides, and
    costs on click-tab (seed 0, 6,000 steps, final / greedy at 6k: click-shape 0.60 / 0.70 at 5k with it, 0.34 /
    0.25 without; click-tab 0.72 / 0.60 at 5k with it, 0.88 / 1.0 without; with `memory` on too, click-shape
    0.76 / 0.95)."""
    affordance: bool = True
    """Learn, per patch and 4x4 sub-cell, whether pointing there changes the screen (from every pointer action's
    observed change: no reward needed) and add it to the point logits by a learned gain (agent/policy.py), so
    clicks go to things that react (a field, a tab) rather than to a label or the background. click-tab at 6,000
    steps, seeds 0/1/2: 0.72/0.64/0.64 with it, 0.44/0.00/0.00 without."""
    ignore_echo: bool = True
    """Do not take the instruction's own words for targets where the instruction is written out on the screen
    (a task header: word after word as in the instruction, agent/reading.instruction_echo). Without it, 73% of
    focus-text's clicks went to the header, where every word of the instruction matches."""
    label_prior: bool = True
    """Start out pointing just below a word of the instruction as readily as at the word itself (a field under
    its label); a learned gain decides how much to keep trusting it.

    These two, `prior_entropy`, `small_heads` and `ppo.adv_std_floor` became the defaults together (seed 0,
    6,000 steps, against the previous defaults): click-button 80% at 1,500 steps (3,000), click-tab 0.88
    final and 80% at 4,500 (0.72, never), confirm-dialog 80% at 4,000 (6,000), enter-text 80% at 5,000 (4,000);
    focus-text learns at all (0.42 final with all but small_heads; seeds 1 and 2 with all: 0.36 and greedy
    0.70 at 6,000, 0.16; 0 in every earlier run)."""
    label_select: bool = True
    """The label prior's word is chosen by its own learned choice, not the one that says which word to click
    on. With one shared choice, picking a field's label also put the largest logits on the label's own text,
    which does nothing when clicked; focus-text's learned choice fled to a word shown nowhere ("and": 0.86-0.98
    of it on 7 of 10 screens after 20,000 steps) and clicks went by position alone. The choice is among the
    words shown alone on the screen (matching at least policy.SHOWN outside the echo): on focus-text that is
    the field's label from the first step. A free choice over all words learned nothing in 6,000 steps on
    seeds 0 and 1 (0.0 final; it drifted to "field" and the quoted word, shown nowhere alone)."""
    prior_entropy: bool = True
    """The entropy bonus on the action type pulls toward the types the policy started with (mostly clicks;
    typing and keys when the instruction quotes a text or names a key) rather than toward uniform: while
    every episode fails it otherwise drifts to drags, scrolls and right-clicks, which no playground task needs."""
    small_heads: bool = True
    """Start the action heads' weights 100x smaller than PyTorch's default (as on-policy RL studies recommend,
    Andrychowicz et al. 2021) and their biases at zero (the type head's at its GUI prior): the first policy is
    then its priors, the same for every seed, instead of a random preference for some action or region."""
    rollout: int = 128
    """Env steps between updates."""
    gamma: float = 0.97
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    curiosity: float = 0.02
    """Weight of the world model's prediction error as an intrinsic reward (0: off)."""
    goal_shaping: float = 0.5
    """Potential-based shaping by the goal text: reward for making the instruction's quoted text appear on the
    screen, taken back when the episode ends (agent/shaping.py; leaves the optimal policy unchanged). The steps'
    rewards the database keeps (and the panel shows) include it; episode returns and success do not. 0: off."""
    timeout_is_failure: bool = True
    """Treat the task's step budget as part of the task: a timeout is a final failure (its -1 is the outcome),
    not a cut-off to bootstrap past."""
    failure_as_timeout: bool = True
    """Learn from a failure that ends an episode before its step budget as if the episode had run on to its
    timeout (the same discounted -1 and step costs; `failure_reward`): failing early is then no better and no
    worse than failing late. Off, the discount makes every failure cheaper the later it comes, so before its
    first success the agent learns to avoid whatever can end an episode (pressing Enter in a field). Episode
    returns and success stay the env's."""
    sil_capacity: int = 4000
    """Steps of the agent's own successful episodes kept for self-imitation."""
    map_replay: int = 4000
    """With the success map on: the latest pointer actions with a known outcome (success or failure) kept and
    replayed to the map's classification loss at every optimiser step (`ppo.map_batch` of them), so each click
    teaches the map for many updates instead of the two passes over its rollout (0: no replay)."""
    replay: str = "recent"
    """Which successes self-imitation replays: recent (the newest, whatever their task) or balanced (every task
    keeps a share and is sampled evenly: CLEAR-style rehearsal of earlier tasks against forgetting)."""
    plasticity: float = 0.0
    """Shrink-and-perturb after every update (0: off): each weight matrix shrinks by this fraction and gets fresh
    noise of its initial scale (trainer/plasticity.py), so units that stopped learning can learn again later."""
    threads: int = 1
    """torch CPU threads (1 is faster than 2 when anything else shares the cores)."""
    fusion_layers: int = 1
    """Transformer layers fusing instruction and screen tokens."""
    memory: bool = True
    """Recall: successful episodes' targets go to episodic memory, and the nearest remembered goals' targets,
    matched on the screen, are a click prior the policy learns to trust (agent/recall.py). It helps where the
    target is known by its look, not by a written word (click-shape, 6,000 steps, greedy at 6k / last 50
    sampled: seed 0 with it 0.90 / 0.60, without 0.25 / 0.34, its trust in memory, the recall gain, grew from
    0 to 2.7; seed 1 with it 0.90 at 5k / 0.66, without 0.40 / 0.40; seed 2 0.50 / 0.40 with it, 0.50 / 0.34
    without). Where the remembered targets all look alike it learns to distrust them (focus-text's fields: gain
    -0.86 at 16k); on click-tab (seed 0) 0.85 / 0.78 with it against 1.0 / 0.88 without. No cost in steps/s."""
    memory_k: int = 4
    """Remembered targets recalled per decision (chosen to differ in look among the 8k nearest and
    the 8k newest of the same goal: agent/recall.py)."""
    history: bool = True
    """Tell the policy what it did last in the episode (policy.History): the last decision's type, whether it
    changed the screen and the decision count, as one token and as direct terms on the type, word and patch
    choices (from zero), and a learned mark on the patch it pointed at. For tasks whose steps look alike on
    screen: choose-radio (the radio, then Submit; the screens differ by a 3-pixel dot) read the right words but
    not which comes first. choose-radio, 5,000 steps, seeds 0/1/2, final sampled success: 0.66 / 0.78 / 0.84
    with it, 0.18 / 0.18 / 0.20 without (greedy 0 throughout without; 0.75 / 0.9 / 0.95 with it at 4k-5k).
    right-click-item, seeds 0/1/2: 0.60 / 0.36 / 0.10 with it, 0.62 / 0.04 / 0.28 without (one seed starts,
    another stalls: no clear effect). The other six tasks of `bench continual`, each alone for 2,000 steps (seed
    0), with it / without it (an earlier run): confirm-dialog 0.56 / 0.52, click-button 0.94 / 1.00, click-shape
    0.22 / 0.18, click-tab 0.82 / 0.54, double-click-item 0.56 / 0.62, choose-menu 0.52 / 0.72 (a second run
    without it: 0.56; one seed's spread)."""
    tools: bool = False
    """Tools as actions: active tools of the library are offered to the policy as options (agent/tools.py); with
    `squirrel learn`, tools mined from the agent's own successes become active at --tool-support successes."""
    tool_threshold: float = 0.5
    """Appearance similarity (0..1) at which a tool's target counts as found on a screen."""
    ppo: PPOConfig = field(default_factory=PPOConfig)


_NOTED: set[str] = set()


def _pretrained(cfg: AgentConfig) -> str | None:
    """The weights file to start from: "auto" is the cached reading prior when there is one (else None: random
    init, noted once per process)."""
    if cfg.pretrained != "auto":
        return cfg.pretrained or None
    from perception.encoder import find_prior

    try:
        return find_prior(cfg.encoder)
    except UserError:
        if cfg.encoder not in _NOTED:
            _NOTED.add(cfg.encoder)
            print(f"squirrel: no reading prior for encoder {Path(cfg.encoder).stem} yet, so the agent starts from random "
                  "init; `squirrel pretrain` makes one once (4-10 minutes by machine) and later runs start from it")
        return None


class Agent:
    """Policy + world model + optimiser, and the trainer's ActorCritic interface over them."""

    def __init__(self, cfg: AgentConfig, text_encoder=None):
        from perception.encoder import create_encoder

        if cfg.replay not in ("recent", "balanced"):
            raise UserError(f"--agent.replay {cfg.replay!r}: use recent or balanced")
        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.pretrained_from = _pretrained(cfg)  # the weights file it started from (None: random init)
        encoder = create_encoder(cfg.encoder, self.pretrained_from, freeze=cfg.freeze_encoder)
        self.policy = Policy(encoder, reading=cfg.reading, layers=cfg.fusion_layers, learned_matcher=cfg.learned_matcher,
                             recall=cfg.memory, tools=cfg.tools, text_prior=cfg.text_prior,
                             success_map=cfg.success_map, affordance=cfg.affordance,
                             ignore_echo=cfg.ignore_echo, label_prior=cfg.label_prior,
                             prior_entropy=cfg.prior_entropy, small_heads=cfg.small_heads,
                             label_select=cfg.label_select, history=cfg.history)
        D = encoder.dim
        self.n_types = N_TYPES + int(cfg.tools)  # "call a tool" is one more type
        self.action_dim = self.n_types + D + len(KEYS)
        self.world_model = WorldModel(encoder.pooled_dim, self.action_dim)
        # Adam moves each weight by about lr per step, so a unit-scale gain (how much to trust the word
        # match) would need thousands of updates at the shared lr: the reading scalars get their own.
        gains = [p for n, p in self.policy.named_parameters()
                 if n in ("match_gain", "learned_gain", "density_gain", "recall_gain", "quote_gain", "key_name_gain",
                          "type_prior_gain", "affordance_gain", "label_gain")]
        rest = [p for p in list(self.policy.parameters()) + list(self.world_model.parameters())
                if p.requires_grad and all(p is not g for g in gains)]
        groups = [{"params": rest}] + ([{"params": gains, "lr": cfg.gain_lr}] if gains else [])
        self.optimizer = torch.optim.Adam(groups, lr=cfg.ppo.lr, eps=1e-5)
        self.plasticity = ShrinkPerturb([self.policy, self.world_model], cfg.plasticity)  # after every update
        self.instructions = InstructionCache(text_encoder)
        self.goal_text = GoalText(self.instructions, cfg.goal_shaping, cfg.gamma)  # the episode's shaping
        self.recall = None  # an agent.recall.Recall when cfg.memory (set by whoever owns the database)
        self.tools = None  # an agent.tools.ToolSet when cfg.tools (likewise); None: no tool is offered

    def memory_inputs(self, instructions: list[str]) -> list | None:
        """Per instruction, the recalled neighbours' token features (None when recall is off)."""
        if not self.cfg.memory or self.recall is None:
            return None
        return self.recall.tokens(instructions, self.instructions.batch(instructions)["sentence"].numpy())

    def tool_inputs(self, frames: np.ndarray) -> list | None:
        """Per frame, the tools offered on it (None when tools are off)."""
        if not self.cfg.tools:
            return None
        if self.tools is None:
            from agent.tools import MAX_TOOLS, TOOL_F, ToolInputs

            off = torch.zeros(MAX_TOOLS, dtype=torch.bool)
            none = ToolInputs(torch.zeros(MAX_TOOLS, TOOL_F), off, off, off)
            return [none] * len(frames)
        return [self.tools.inputs(f) for f in frames]

    def obs_batch(self, obs: dict, history: History | None = None) -> ObsBatch:
        """One env observation as a batch of one, with the episode so far when the policy is told it (history on;
        None: the episode's start)."""
        hist = [(history or History()).features()] if self.cfg.history else None
        return ObsBatch(obs["screen"][None], [obs["instruction"]], history=hist)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "world_model": self.world_model}

    def _forward(self, obs: ObsBatch):
        instr = self.instructions.batch(obs.instructions)
        B = len(obs.instructions)
        nw = instr["word_mask"].sum(1) if self.cfg.reading else torch.zeros(B, dtype=torch.long)  # word maps per row
        recall = None
        if obs.match is not None:  # maps computed while acting: words (padded to the batch's K), then recalled targets
            if self.cfg.reading:
                K = instr["word_mask"].shape[1]
                m = torch.full((B, K, *obs.match[0].shape[1:]), -1.0)
                for i, mi in enumerate(obs.match):
                    m[i, : int(nw[i])] = mi[: int(nw[i])].float()
                instr = dict(instr, match=m)
            recall = [mi[int(nw[i]):] for i, mi in enumerate(obs.match)]
        elif self.recall is not None:
            recall = self.recall.maps(obs.frames, obs.instructions, instr["sentence"].numpy())
        if recall is not None and self.cfg.memory:
            M = max(r.shape[0] for r in recall)
            rm = torch.zeros(B, M, *MAP_SHAPE)
            for i, r in enumerate(recall):
                rm[i, : r.shape[0]] = r.float()
            instr = dict(instr, recall=rm, recall_n=torch.tensor([r.shape[0] for r in recall]))
        mem = obs.memory
        if mem is None and self.cfg.memory and self.recall is not None:
            mem = self.recall.tokens(obs.instructions, instr["sentence"].numpy())
        if mem is not None and self.cfg.memory:
            M = max(m.shape[0] for m in mem)
            mm = torch.zeros(B, M, MEM_F)
            for i, m in enumerate(mem):
                mm[i, : m.shape[0]] = m
            instr = dict(instr, memory=mm, memory_mask=torch.arange(M)[None] < torch.tensor([m.shape[0] for m in mem])[:, None])
        if self.cfg.tools:
            tin = obs.tools if obs.tools is not None else self.tool_inputs(obs.frames)
            instr = dict(instr, tool_desc=torch.stack([t.desc for t in tin]), tool_mask=torch.stack([t.mask for t in tin]),
                         tool_param=torch.stack([t.param for t in tin]),
                         tool_point=torch.stack([t.point for t in tin]))
        if self.cfg.history and obs.history is not None:
            start = History().features()
            instr = dict(instr, history=torch.stack([start if h is None else h for h in obs.history]))
        x, instr = self.policy.prepare(obs.frames, instr)
        return self.policy(x, instr), dict(instr, n_words=nw)

    def learning_reward(self, env, reward: float, terminated: bool, info: dict) -> float:
        """The env's reward of a step as the agent learns from it (`failure_as_timeout`; shaping is added apart)."""
        if not self.cfg.failure_as_timeout:
            return reward
        return failure_reward(reward, terminated, info, self.cfg.gamma, getattr(env.unwrapped, "step_cost", 0.0))

    def action_features(self, o, a: ActionBatch) -> torch.Tensor:
        """(B, 9 (+1 with tools) + D + 20): the action type, the fused token of the patch it points at, the key."""
        B = a.type.shape[0]
        is_ptr = torch.isin(a.type, _POINTER_IDS)
        target = o.patches[torch.arange(B), a.patch] * is_ptr[:, None]
        key = torch.nn.functional.one_hot(a.key, len(KEYS)) * (a.type == ActionType.KEY)[:, None]
        return torch.cat([torch.nn.functional.one_hot(a.type, self.n_types).float(), target, key.float()], -1)

    @torch.no_grad()
    def act(self, obs: ObsBatch, greedy: bool = False):
        """Decide for a batch. Returns (actions, logp, value, state, action features, PolicyOutput, match maps)."""
        o, instr = self._forward(obs)
        a = self.policy.sample(o, greedy)
        logp, _ = self.policy.log_prob_entropy(o, a)
        match = None
        if "match" in instr or "recall" in instr:  # kept with the step, so updates need not match again
            B, nw = o.value.shape[0], instr["n_words"]
            words = [instr["match"][i, : int(nw[i])].half() if "match" in instr else torch.zeros(0, *MAP_SHAPE).half()
                     for i in range(B)]
            rec = [instr["recall"][i, : int(instr["recall_n"][i])].half() if "recall" in instr else words[i][:0]
                   for i in range(B)]
            match = [torch.cat([w, r]) for w, r in zip(words, rec)]
        return a, logp, o.value, o.state, self.action_features(o, a), o, match

    def evaluate(self, obs: ObsBatch, actions: ActionBatch) -> Evaluation:
        o, _ = self._forward(obs)
        logp, ent = self.policy.log_prob_entropy(o, actions)
        ar = torch.arange(len(actions.patch))
        sl = None if o.success is None else o.success[ar, actions.patch]
        al = None if o.affordance is None else o.affordance[ar, actions.patch, actions.sub]
        return Evaluation(logp, ent, o.value, o.state, self.action_features(o, actions), sl, al)


class Step(NamedTuple):
    frame: np.ndarray
    instruction: str
    action: ActionBatch  # batch of one
    logp: float
    value: float
    reward: float
    terminated: bool
    truncated: bool
    state: torch.Tensor  # (D,)
    action_features: torch.Tensor  # (F,)
    changed: bool
    match: torch.Tensor | None = None  # (k,h,w) float16 word match maps of this screen
    tools: object = None  # agent.tools.ToolInputs offered at this decision (tools on)
    duration: int = 1  # env steps the decision took (a tool call takes several): discount gamma ** duration
    prims: list | None = None  # a tool call's primitive steps: [(frame acted on, Action, tool id)]
    memory: torch.Tensor | None = None  # (M, MEM_F) the recalled neighbours the policy saw (recall on)
    success: bool | None = None  # the env's verdict after this step; read on an episode's last step (None: unknown)
    history: torch.Tensor | None = None  # (HISTORY_F+1,) what the policy was told of the episode before it (history on)


def _cat_actions(actions: list[ActionBatch]) -> ActionBatch:
    return ActionBatch(*(torch.cat(f) for f in zip(*actions)))


class SelfImitationBuffer:
    """The agent's own successful episodes: (frame, instruction, action, discounted return), per task.

    Not balanced: the most recent successful steps, whatever their task (a new task's successes push an earlier
    task's out). Balanced (CLEAR-style replay against forgetting): every task keeps a share of the capacity (the
    task holding most steps gives up its oldest when full) and samples are drawn evenly across tasks, so what the
    agent learned on an earlier task keeps being rehearsed while it learns a new one.
    """

    def __init__(self, capacity: int, gamma: float, balanced: bool = False):
        self.capacity, self.gamma, self.balanced = capacity, gamma, balanced
        self.queues: dict[str, deque] = {}
        self._order: deque = deque()  # task of every stored step, oldest first (not balanced)

    def add_episode(self, steps: list[Step], task: str = "") -> None:
        g = 0.0
        rows = []
        for s in reversed(steps):
            g = s.reward + self.gamma ** s.duration * g
            rows.append((s.frame, s.instruction, s.action, g, s.match, s.tools, s.memory, s.history))
        self.queues.setdefault(task, deque()).extend(reversed(rows))
        if not self.balanced:
            self._order.extend([task] * len(rows))
        while len(self) > self.capacity:
            if self.balanced:
                self.queues[max(self.queues, key=lambda t: len(self.queues[t]))].popleft()
            else:
                self.queues[self._order.popleft()].popleft()

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def task_counts(self) -> dict[str, int]:
        return {t: len(q) for t, q in self.queues.items() if q}

    def sample(self, n: int) -> SILBatch | None:
        if len(self) < n:
            return None
        if self.balanced:  # a task uniformly, then one of its steps
            tasks = [t for t, q in self.queues.items() if q]
            picks = np.random.randint(0, len(tasks), n)
            rows = [self.queues[tasks[k]][np.random.randint(len(self.queues[tasks[k]]))] for k in picks]
        else:
            flat = [q for q in self.queues.values() if q]
            sizes = np.array([len(q) for q in flat])
            idx = np.random.randint(0, sizes.sum(), n)
            bounds = np.cumsum(sizes)
            rows = []
            for i in idx:
                k = int(np.searchsorted(bounds, i, side="right"))
                rows.append(flat[k][i - (bounds[k - 1] if k else 0)])
        obs, actions = _rows_obs(rows)
        return SILBatch(obs, actions, torch.tensor([r[3] for r in rows], dtype=torch.float32))


class OutcomeReplay:
    """The success map's replay: the latest pointer actions whose episode outcome is known, with that outcome
    (1 success, 0 failure). The label says where pointing on that screen led, so it stays a fair target for the
    map after the policy has moved on (exactly so when the task is one decision; for longer tasks it also
    carries the later steps' luck)."""

    def __init__(self, capacity: int):
        self.rows: deque = deque(maxlen=capacity)

    @classmethod
    def for_config(cls, cfg: AgentConfig) -> "OutcomeReplay | None":
        """The replay an agent with `cfg` keeps (None: the success map is off, or its replay is)."""
        return cls(cfg.map_replay) if cfg.success_map and cfg.map_replay > 0 else None

    def add_episode(self, steps: list[Step]) -> None:
        for s, y in zip(steps, pointer_outcomes(steps).tolist()):
            if y >= 0:
                self.rows.append((s.frame, s.instruction, s.action, y, s.match, s.tools, s.memory, s.history))

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, n: int) -> MapBatch | None:
        if len(self.rows) < n:
            return None
        rows = [self.rows[i] for i in np.random.randint(0, len(self.rows), n)]
        obs, actions = _rows_obs(rows)
        return MapBatch(obs, actions, torch.tensor([r[3] for r in rows], dtype=torch.float32))


def _all_or_none(xs: list) -> list | None:
    return xs if all(x is not None for x in xs) else None


def _rows_obs(rows: list[tuple]) -> tuple[ObsBatch, ActionBatch]:
    """Replay rows (frame, instruction, action, target, match, tools, memory, history) as one ObsBatch and
    ActionBatch."""
    match, tools, memory = (_all_or_none([r[i] for r in rows]) for i in (4, 5, 6))
    return (ObsBatch(np.stack([r[0] for r in rows]), [r[1] for r in rows], match, tools, memory, [r[7] for r in rows]),
            _cat_actions([r[2] for r in rows]))


@dataclass
class EpisodeResult:
    task: str
    success: bool | None
    ret: float
    steps: int
    env_steps: int  # total env steps so far, this one included
    episode: int
    seed: int = 0
    instruction: str = ""
    transitions: list = field(default_factory=list)  # the episode's Steps
    decisions: int = 0  # the policy's decisions (a tool call is one; `steps` counts env steps)
    db_id: int | None = None  # its row in the agent's database, once recorded (learn_cli.LearnRun)


class Learner:
    """Runs the loop on a (gated) env. `tasks` are assigned round-robin, one per episode."""

    def __init__(self, agent: Agent, env, tasks: list[str], seed: int = 0):
        self.agent, self.env, self.tasks = agent, env, list(tasks)
        self.cfg = agent.cfg
        self.rng = np.random.default_rng(seed)
        self.sil = SelfImitationBuffer(self.cfg.sil_capacity, self.cfg.gamma, self.cfg.replay == "balanced")
        self.outcomes = OutcomeReplay.for_config(self.cfg)
        self.env_steps = self.episodes = self.updates = self.decisions = 0
        self.buffer: list[Step] = []
        self._finals: dict[int, tuple[float, torch.Tensor]] = {}  # buffer index -> final obs (value, state)
        self.episode_steps: list[Step] = []
        self.err_mean = 1e-2  # running mean of world-model error (curiosity scale)
        self.last_losses: dict[str, float] = {}
        self.decision_callbacks: list[Callable[[ObsBatch, object], None]] = []  # (obs, PolicyOutput) before acting
        self.episode_callbacks: list[Callable[[EpisodeResult], bool | None]] = []
        self.update_callbacks: list[Callable[[dict], bool | None]] = []
        self.pending: dict[int, tuple[EpisodeResult, tuple[float, torch.Tensor]]] = {}  # episode -> (result, final)
        self.max_pending = 100  # undecided episodes kept for learning (older ones only wait in the database)
        self._ask = False  # the running episode's outcome is a person's
        self._cur_start = 0  # where the running episode's steps begin in the buffer
        self._obs = None
        self._history = History()  # the running episode's, as the policy is told it (history on)
        self._task_i = 0
        self.stop_requested = False

    def counters(self) -> dict:
        return {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.updates, "task_i": self._task_i,
                "decisions": self.decisions}

    def load_counters(self, c: dict) -> None:
        self.env_steps, self.episodes, self.updates = c["env_steps"], c["episodes"], c["updates"]
        self._task_i = c.get("task_i", 0)
        self.decisions = c.get("decisions", self.env_steps)

    def _reset(self):
        task = self.tasks[self._task_i % len(self.tasks)]
        self._task_i += 1
        seed = int(self.rng.integers(0, 2**31 - 1))
        obs, info = self.env.reset(seed=seed, options={"task": task})
        self._obs, self._task, self._seed = obs, task, seed
        self._ask = bool(info.get("ask_person"))
        self._cur_start = len(self.buffer)
        self.episode_steps, self._ret = [], 0.0
        self._history = History()
        self.agent.goal_text.start(obs["screen"], obs["instruction"])

    def run(self, total_steps: int) -> None:
        """Act and learn until `total_steps` env steps in all (counting earlier runs when resumed)."""
        if self._obs is None:
            self._reset()
        while self.env_steps < total_steps and not self.stop_requested:
            interrupt.check()
            obs = self._obs
            tin = self.agent.tool_inputs(obs["screen"][None])
            mem = self.agent.memory_inputs([obs["instruction"]])
            hist = self._history.features() if self.cfg.history else None
            ob = ObsBatch(obs["screen"][None], [obs["instruction"]], tools=tin, memory=mem,
                          history=None if hist is None else [hist])
            a, logp, value, state, af, out, match = self.agent.act(ob)
            for cb in self.decision_callbacks:
                cb(ob, out)
            next_obs, reward, terminated, truncated, info, prims = execute(self.agent, self.env, obs, a)
            duration = env_steps_of(prims)
            self.env_steps += duration
            self.decisions += 1
            changed = not np.array_equal(next_obs["screen"], obs["screen"])
            ended = terminated or (truncated and self.cfg.timeout_is_failure)
            shaped = self.agent.learning_reward(self.env, reward, terminated, info) + self.agent.goal_text.shape(
                next_obs["screen"], ended, max(1, duration))
            step = Step(obs["screen"], obs["instruction"], a, float(logp[0]), float(value[0]), float(shaped),
                        bool(terminated), bool(truncated), state[0], af[0], changed, match[0] if match else None,
                        tin[0] if tin else None, max(1, duration), prims,
                        mem[0] if mem else None, info.get("success"), hist)
            if not self._ask:  # a person's task waits for its verdict before it is learned from
                self.buffer.append(step)
            self.episode_steps.append(step)
            self._ret += float(reward)
            self._obs = next_obs
            self._history.after(a, changed)
            if terminated or truncated:
                # the final observation: its value (bootstrap on truncation) and embedding (world-model target)
                _, _, v_final, s_final, *_ = self.agent.act(self.agent.obs_batch(next_obs, self._history))
                final = (float(v_final[0]), s_final[0])
                success = info.get("success")
                self.episodes += 1
                res = EpisodeResult(self._task, success, self._ret, sum(s.duration for s in self.episode_steps),
                                    self.env_steps, self.episodes, self._seed, obs["instruction"], self.episode_steps,
                                    len(self.episode_steps))
                self._cur_start = len(self.buffer)  # nothing is running until the next reset
                if not self._ask:
                    self._finals[len(self.buffer) - 1] = final
                elif success is None and info.get("ask_person"):
                    self.pending[res.episode] = (res, final)
                    while len(self.pending) > self.max_pending:
                        self.pending.pop(next(iter(self.pending)))
                else:  # a person's task that ended on its own (a timeout): learn from it now
                    self._insert_episode(self.episode_steps, final)
                if success:
                    self.sil.add_episode(self.episode_steps, self._task)
                if self.outcomes is not None:  # an undecided episode has no labels yet (judge() adds it)
                    self.outcomes.add_episode(self.episode_steps)
                if any(cb(res) is False for cb in self.episode_callbacks):
                    self.stop_requested = True
                self._reset()
            if len(self.buffer) >= self.cfg.rollout:
                self._update()

    def evaluate(self, task: str, episodes: int, seed: int = 1_000_000) -> tuple[float, int]:
        """Greedy episodes of `task` on fixed seeds (the same screens every time): (success rate, env steps).
        Nothing is learned from them and they do not count as training steps. Call between episodes."""
        wins, steps = greedy_episodes(self.agent, self.env, task, range(seed, seed + episodes))
        return wins / max(episodes, 1), steps

    def judge(self, episode: int, good: bool) -> EpisodeResult | None:
        """A person's verdict on a pending episode (by `EpisodeResult.episode`): its last reward becomes +1/-1
        (on top of the step cost) and it joins the next update. Returns the judged result, or None when the
        episode is not pending here (unknown, already judged, or dropped as too old)."""
        item = self.pending.pop(episode, None)
        if item is None:
            return None
        res, final = item
        steps = list(res.transitions)
        steps[-1] = steps[-1]._replace(reward=steps[-1].reward + (1.0 if good else -1.0), success=good)
        res.success, res.ret, res.transitions = good, res.ret + (1.0 if good else -1.0), steps
        self._insert_episode(steps, final)
        if good:
            self.sil.add_episode(steps, res.task)
        if self.outcomes is not None:
            self.outcomes.add_episode(steps)
        return res

    def _insert_episode(self, steps: list[Step], final: tuple[float, torch.Tensor]) -> None:
        """Put a whole finished episode into the rollout before the running episode's steps (the buffer is a
        sequence: a step's successor must stay its next state)."""
        at = self._cur_start
        self.buffer[at:at] = steps
        self._finals[at + len(steps) - 1] = final
        self._cur_start += len(steps)

    def _update(self) -> None:
        # V(s_{t+1}) and the next state's embedding after the rollout's last step
        _, _, v_last, s_last, *_ = self.agent.act(self.agent.obs_batch(self._obs, self._history))
        batch, self.err_mean = ppo_batch(self.agent, self.buffer, self._finals, (float(v_last[0]), s_last[0]),
                                         self.err_mean)
        t0 = time.perf_counter()
        self.last_losses = ppo_update(self.agent, self.agent.world_model, self.agent.optimizer, batch, self.cfg.ppo,
                                      self.sil.sample if len(self.sil) >= self.cfg.ppo.sil_batch else None,
                                      should_stop=lambda: self.stop_requested,
                                      map_sampler=self.outcomes.sample if self.outcomes is not None else None)
        self.agent.plasticity()
        self.last_losses["update_s"] = time.perf_counter() - t0
        self.updates += 1
        self.buffer, self._finals, self._cur_start = [], {}, 0
        info = dict(self.last_losses, updates=self.updates, env_steps=self.env_steps)
        if any(cb(info) is False for cb in self.update_callbacks):
            self.stop_requested = True


@torch.no_grad()
def greedy_episodes(agent: Agent, env, task: str, seeds) -> tuple[int, int]:
    """The policy's best guess, no exploration, one episode per seed: (successes, env steps). Not learned from."""
    wins = steps = 0
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed), options={"task": task})
        hist = History()
        while True:
            a = agent.act(agent.obs_batch(obs, hist), greedy=True)[0]
            before = obs["screen"]
            obs, _, terminated, truncated, info, prims = execute(agent, env, obs, a)
            hist.after(a, not np.array_equal(obs["screen"], before))
            steps += env_steps_of(prims)
            if terminated or truncated:
                wins += bool(info.get("success"))
                break
    return wins, steps


def execute(agent: Agent, env, obs: dict, a: ActionBatch):
    """Carry out the decision in row 0 of `a` on `env` from `obs`: one primitive action, or a tool call's steps.
    Returns (next_obs, reward, terminated, truncated, info, prims): a tool call's reward is its steps' rewards
    discounted within the call, and prims its [(frame acted on, Action, tool id)] (None for a primitive action)."""
    if int(a.type[0]) != TOOL:
        return (*env.step(agent.policy.to_action(a)), None)
    prims, rewards, last = [], [], [obs, 0.0, False, False, {}]
    tool_id = agent.tools.tools[int(a.tool[0])].id

    def on_step(o, action, result):
        prims.append((o["screen"], action, tool_id))
        rewards.append(float(result[1]))
        last[:] = result

    start = int(a.start[0])
    point = agent.policy.point(a.patch[0], a.sub[0])  # where a point tool's first step acts
    agent.tools.call(int(a.tool[0]), env, obs, (start, start + int(a.length[0])), on_step, point)
    g = agent.cfg.gamma
    reward = sum(r * g ** i for i, r in enumerate(rewards))
    return last[0], reward, last[2], last[3], last[4], prims


def failure_reward(reward: float, terminated: bool, info: dict, gamma: float, step_cost: float) -> float:
    """The reward to learn from for a step that ended its episode in failure with R steps of budget left: the
    discounted value of running on to the timeout instead, reward + (1 - gamma^R) - step_cost * sum_{j=1..R}
    gamma^j (the env's failure is -1, at the end of the budget as at any other time). Other steps: unchanged."""
    if not terminated or info.get("success") is not False or "max_steps" not in info:
        return reward
    left = max(0, int(info["max_steps"]) - int(info.get("steps", info["max_steps"])))
    return reward + (1.0 - gamma ** left) - step_cost * sum(gamma ** j for j in range(1, left + 1))


def env_steps_of(prims: list | None) -> int:
    """Env steps a decision took, from execute()'s prims: one for a primitive action, each step of a tool call."""
    return 1 if prims is None else len(prims)


def ppo_batch(agent: Agent, steps: list[Step], finals: dict[int, tuple[float, torch.Tensor]],
              last: tuple[float, torch.Tensor] | None, err_mean: float) -> tuple[PPOBatch, float]:
    """A PPOBatch from a sequence of Steps: GAE advantages and the world model's targets. `finals[t]` is the
    (value, state) of the final observation where an episode ended at step t; `last` the same for the
    observation after the last step when that step did not end an episode (None: it did). The curiosity bonus
    is added to the rewards, scaled by the running mean of world-model error: returns (batch, new mean)."""
    cfg = agent.cfg
    T = len(steps)
    # V(s_{t+1}) and the next state's embedding for every step
    next_values = torch.zeros(T)
    next_state = torch.zeros(T, steps[0].state.shape[0])
    for t in range(T):
        if t in finals:
            next_values[t], next_state[t] = finals[t]
        elif t + 1 < T:
            next_values[t], next_state[t] = steps[t + 1].value, steps[t + 1].state
        else:
            next_values[t], next_state[t] = last
    rewards = torch.tensor([s.reward for s in steps], dtype=torch.float32)
    states = torch.stack([s.state for s in steps])
    afs = torch.stack([s.action_features for s in steps])
    if cfg.curiosity > 0:
        with torch.no_grad():
            err = WorldModel.errors(agent.world_model(states, afs)[0], next_state)
        err_mean = 0.99 * err_mean + 0.01 * float(err.mean())
        rewards = rewards + cfg.curiosity * (err / (err_mean + 1e-8)).clamp(max=5.0)
    values = torch.tensor([s.value for s in steps])
    final = [s.terminated or (s.truncated and cfg.timeout_is_failure) for s in steps]
    gamma = torch.tensor([cfg.gamma ** s.duration for s in steps]) if any(s.duration != 1 for s in steps) else cfg.gamma
    adv, ret = gae(rewards, values, torch.tensor(final), torch.tensor([s.truncated for s in steps]),
                   next_values, gamma, cfg.gae_lambda)
    actions = _cat_actions([s.action for s in steps])
    batch = PPOBatch(
        obs=ObsBatch(np.stack([s.frame for s in steps]), [s.instruction for s in steps],
                     [s.match for s in steps] if steps[0].match is not None else None,
                     [s.tools for s in steps] if steps[0].tools is not None else None,
                     _all_or_none([s.memory for s in steps]), [s.history for s in steps]),
        actions=actions,
        old_logp=torch.tensor([s.logp for s in steps]), old_value=values, advantages=adv, returns=ret,
        next_state=next_state, changed=torch.tensor([float(s.changed) for s in steps]), has_next=torch.ones(T),
        outcome=pointer_outcomes(steps) if cfg.success_map else None,
        pointer=torch.isin(actions.type, _POINTER_IDS).float() if cfg.affordance else None)
    return batch, err_mean


def pointer_outcomes(steps: list[Step]) -> torch.Tensor:
    """(T,) the success map's labels: 1.0 for each pointer action of an episode that went on to succeed; 0.0 for
    the last pointer action of an episode that failed (the click that failed it, or the last of the budget), and
    -1 (no label) for its earlier ones, which may have been right on the way to a later mistake (click the tab,
    then the wrong field); -1 too when not a pointer action, the episode still running at the end of the
    rollout, or an outcome nobody knows."""
    out, cur, last_seen = torch.full((len(steps),), -1.0), None, False
    for t in range(len(steps) - 1, -1, -1):
        s = steps[t]
        if s.terminated or s.truncated:
            cur, last_seen = s.success, False
        if cur is not None and int(s.action.type[0]) in POINTER_IDS:
            if cur or not last_seen:
                out[t] = float(cur)
            last_seen = True
    return out
