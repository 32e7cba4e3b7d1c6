"""The goal-conditioned policy over the screen encoder's patches (DESIGN.md decisions 2, 4, 5).

    screen (B,3,H,W) --encoder--> patch tokens (B,N,D)  (N = gh*gw patches of 16 px)
    instruction --MiniLM--> sentence (B,384), words (B,K,384) --proj--> goal token, word tokens (D)
    [value/type token, goal, (history), words, memory, patches] --transformer layers--> fused tokens
    (memory: with recall, one token per recalled neighbour, agent/recall.py MEM_F features projected to D)
    (history, optional: the episode so far as one token, the last decision's type, whether the screen changed
     and the decision count, and a learned mark added to the patch it pointed at; History below)
    heads: action type (9), key (20), value, TYPE span (start word, length), point and drag end
           (a patch, then one of 4x4 sub-cells: 4 px accuracy)
    success map (optional): per fused patch token, the logit that pointing there now ends in success, trained
           by a plain classification loss on the outcome of every pointer action the agent took (failures teach
           as much as successes); its log-probability joins the point logits by a learned gain
    affordance map (optional): per fused patch token and 4x4 sub-cell, the logit that pointing there changes the
           screen (a field takes focus, a tab opens; a label or the background does nothing), trained on every
           pointer action's observed change, no reward needed; its log-probability joins the point and sub-cell
           logits by a learned gain, so exploration goes to things that react
    reading: each instruction word rendered as pixels is matched (normalised cross-correlation) against
             the screen (agent/reading.py; optionally also in the encoder's own learned stride-4 features);
             a learned choice of word adds its match map to the point logits, so "click the thing that
             says WORD" is matching, which works for words never seen before. Where the instruction is
             written out (a task header: its words one after another) the match counts for nothing (ignore_echo),
             and the cells just below a word shown alone get its match by a learned gain (label_prior: a field
             under its label), for a word chosen by a second learned choice (label_select): the word to click
             on and the word to click under are different words of different tasks.
    text prior: words in quotes add to the TYPE span's start and length logits (a quoted phrase is what to
             enter), words naming a key ("press Enter") to that key's logit, and either kind present to the
             TYPE / KEY type logits; each by a learned gain (agent/instruction.py reads them).
    tools (optional, agent/tools.py): a 10th action type "call a tool" (offered only when a tool is available
             on the screen), a slot head (the goal state against each tool's descriptor) and the span head for
             a tool that types: the value of calling a tool is learned like any action's (options).

With small_heads the action heads start with 100x smaller weights, so the first policy is its priors for any
seed; with prior_entropy the type's entropy bonus pulls toward those priors rather than toward uniform.

Gradients from every head (and the world model) reach the encoder: it is trained, not frozen.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from agent.actions import KEYS, POINTER_TYPES, Action, ActionType
from agent.instruction import MAX_WORDS
from agent.reading import instruction_density, instruction_echo, match_maps

# While acting (batch 1), the word matching runs on a second thread during the encoder's forward: torch ops
# release the GIL, so on two cores the decision costs about max(encoder, matching) instead of their sum.
_MATCHER = ThreadPoolExecutor(1, thread_name_prefix="word-match")

SUB = 4  # sub-cells per patch side
N_TYPES = len(ActionType)
TOOL = N_TYPES  # the policy's extra action type with tools on: call the tool in slot ActionBatch.tool
SPAN_LENS = 4
TYPE_BIAS = torch.zeros(N_TYPES).index_fill(0, torch.tensor([ActionType.CLICK]), 1.5).index_fill(
    0, torch.tensor([ActionType.DONE]), -1.0)  # the type head's starting bias: mostly clicks, rarely "done"
LABEL_CELLS = 6  # label prior: how far (4 px cells) below a word its field or control may start
SHOWN = 0.88  # label prior: a word matching this well outside the echo is shown there (a label); on focus-text
# screens labels match themselves at 0.93-1.0 and other instruction words ("in", "the", "Enter") at up to 0.84
POINTER_IDS = sorted(int(t) for t in POINTER_TYPES)
HISTORY_F = N_TYPES + 1 + 1 + 4  # history: the last action's type (a tool call last), screen changed, steps 0/1/2/3+


class History:
    """What the policy is told of its episode so far (history on): the last decision's type, whether it changed
    the screen, how many decisions came before, and the patch it pointed at. On choose-radio the screen after
    the radio's click differs from the first by a 3-pixel dot; "I clicked there and it reacted" says it plainly.
    One per running episode: `features()` before a decision, `after()` once its outcome is seen."""

    def __init__(self):
        self.type, self.patch, self.changed, self.steps = -1, -1, False, 0

    def features(self) -> torch.Tensor:
        """(HISTORY_F + 1,) float: the one-hots and flag, then the patch pointed at (-1: none) as the last element."""
        f = torch.zeros(HISTORY_F + 1)
        if self.type >= 0:
            f[self.type] = 1.0
        f[N_TYPES + 1] = float(self.changed)
        f[N_TYPES + 2 + min(self.steps, 3)] = 1.0
        f[-1] = self.patch
        return f

    def after(self, a: "ActionBatch", changed: bool, i: int = 0) -> None:
        """Row i of decision `a` was carried out; `changed`: the screen differs from the one it was taken on."""
        self.type, self.changed, self.steps = int(a.type[i]), bool(changed), self.steps + 1
        self.patch = int(a.patch[i]) if self.type in POINTER_IDS else -1

    @staticmethod
    def along(frames: list, actions: list["ActionBatch"]) -> list[torch.Tensor]:
        """features() before each decision of a recorded episode: actions[i] (a batch of one) taken on frames[i]."""
        h, out = History(), []
        for i, a in enumerate(actions):
            out.append(h.features())
            if i + 1 < len(frames):
                h.after(a, bool((frames[i + 1] != frames[i]).any()))
        return out


def _match_and_echo(frames, word_pixels, widths, mask, echo: bool):
    """match_maps, and instruction_echo on them when `echo` (the matcher thread's work while acting)."""
    m = match_maps(frames, word_pixels, widths, mask)
    return m, instruction_echo(m, torch.as_tensor(widths), torch.as_tensor(mask)) if echo else None


class ActionBatch(NamedTuple):
    """Every head's choice (all sampled; only those the type uses count). Each (B,) int64."""

    type: torch.Tensor
    patch: torch.Tensor
    sub: torch.Tensor
    patch2: torch.Tensor
    sub2: torch.Tensor
    key: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    tool: torch.Tensor  # the tool slot (counts only for type TOOL)


class PolicyOutput(NamedTuple):
    type_logits: torch.Tensor  # (B,9)
    key_logits: torch.Tensor  # (B,20)
    start_logits: torch.Tensor  # (B,K)
    len_logits: torch.Tensor  # (B,K,4) per start word
    patch_logits: torch.Tensor  # (B,N)
    sub_logits: torch.Tensor  # (B,N,16)
    patch2_logits: torch.Tensor  # (B,N)
    sub2_logits: torch.Tensor  # (B,N,16)
    value: torch.Tensor  # (B,)
    state: torch.Tensor  # (B,D) pooled screen embedding (world-model input, memory key)
    patches: torch.Tensor  # (B,N,D) fused patch tokens (the appearance of what a click hits)
    match: torch.Tensor  # (B,N,16) the chosen word's match map
    tool_logits: torch.Tensor | None = None  # (B,T) tool slots (tools on), unavailable ones masked
    tool_param: torch.Tensor | None = None  # (B,T) bool: the slot's tool types a span the policy picks
    success: torch.Tensor | None = None  # (B,N) success-map logits (success map on)
    affordance: torch.Tensor | None = None  # (B,N,16) affordance logits per patch and in-patch cell (affordance on)
    type_prior: torch.Tensor | None = None  # (B,9 or 10) fixed logits the type entropy bonus pulls toward (prior_entropy)
    tool_point: torch.Tensor | None = None  # (B,T) bool: the slot's tool acts first where the policy points


class ReadingMatcher(nn.Module):
    """Normalised cross-correlation of rendered words against the screen, in shared stride-4 features."""

    def __init__(self, stem: nn.Module, stem_channels: int, channels: int = 8):
        super().__init__()
        self.stem = stem  # (B,3,H,W) -> (B,C,H/4,W/4); shared with the encoder when it has a conv stem
        self.proj = nn.Conv2d(stem_channels, channels, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x))

    def forward(self, screen: torch.Tensor, words: torch.Tensor, widths: torch.Tensor, mask: torch.Tensor,
                screen_stem: torch.Tensor | None = None) -> torch.Tensor:
        """screen (B,3,H,W), words (B,K,3,16,80) preprocessed, widths (B,K) px, mask (B,K) -> (B,K,H/4,W/4) in [-1,1].
        screen_stem: stem(screen) when already computed (the encoder's own first layers)."""
        B, K = widths.shape
        f = self.proj(screen_stem if screen_stem is not None else self.stem(screen))  # (B,C,h,w)
        C, h, w = f.shape[1:]
        valid = mask.flatten().nonzero()[:, 0]
        tv = self.features(words.flatten(0, 1)[valid])  # only real words: (V,C,4,24)
        th, tw = tv.shape[2:]
        t = tv.new_zeros(B * K, C, th, tw).index_copy(0, valid, tv)  # (B*K,C,4,20)
        cols = torch.arange(tw, device=t.device)
        stride = words.shape[-1] / tw  # pixels per feature cell
        half = (widths.flatten() / (2 * stride)).clamp(min=1.0)  # the word's half-width in feature cells
        m = ((cols[None] + 0.5 - tw / 2).abs() <= half[:, None]).float()  # (B*K,tw)
        m = m[:, None, None, :].expand(-1, 1, th, tw)  # (B*K,1,th,tw)
        n = (m.sum((1, 2, 3)) * C).clamp(min=1)  # (B*K,)
        mean = (t * m).sum((1, 2, 3)) / n
        t = (t - mean[:, None, None, None]) * m  # zero-mean inside the word, zero outside
        pad = (th // 2, tw // 2)
        num = F.conv2d(f.reshape(1, B * C, h, w), t, padding=pad, groups=B)[0, :, :h, :w]  # (B*K,h,w)
        s1 = F.conv2d(f.sum(1, keepdim=True).reshape(1, B, h, w), m, padding=pad, groups=B)[0, :, :h, :w]
        s2 = F.conv2d((f * f).sum(1, keepdim=True).reshape(1, B, h, w), m, padding=pad, groups=B)[0, :, :h, :w]
        var = (s2 - s1 * s1 / n[:, None, None]).clamp(min=1e-4)
        r = num / (var.sqrt() * t.flatten(1).norm(dim=1).clamp(min=1e-4)[:, None, None])
        return r.reshape(B, K, h, w)


def _small_stem(channels: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels // 2, 3, 2, 1), nn.GELU(), nn.Conv2d(channels // 2, channels, 3, 2, 1), nn.GELU())


def reading_stem(encoder: nn.Module) -> tuple[nn.Module, int]:
    """The stride-4 feature stem the learned matcher reads with, and its channels: the encoder's own conv stem
    (shared weights) when it has one, else a small separate stem."""
    conv1 = getattr(encoder.visual, "conv1", None)
    if isinstance(conv1, nn.Sequential) and len(conv1) >= 4:
        return conv1[:4], conv1[2].out_channels
    return _small_stem(), 32


class Policy(nn.Module):
    def __init__(self, encoder: nn.Module, text_dim: int = 384, layers: int = 2, heads: int = 4, reading: bool = True,
                 learned_matcher: bool = False, recall: bool = False, tools: bool = False, text_prior: bool = False,
                 success_map: bool = False, affordance: bool = False, ignore_echo: bool = False,
                 label_prior: bool = False, prior_entropy: bool = False, small_heads: bool = False,
                 label_select: bool = False, history: bool = False):
        super().__init__()
        self.encoder, self.reading, self.learned_matcher = encoder, reading, reading and learned_matcher
        self.concurrent_matching = True  # acting: match the words on a second thread (see _MATCHER)
        D = encoder.dim
        self.grid = tuple(encoder.grid)  # (gh, gw)
        self.patch = encoder.patch_size
        self.goal_proj = nn.Linear(text_dim, D)
        self.word_proj = nn.Linear(text_dim, D)
        self.word_pos = nn.Parameter(torch.zeros(1, MAX_WORDS, D))
        self.cls = nn.Parameter(torch.zeros(1, 1, D))
        layer = nn.TransformerEncoderLayer(D, heads, 2 * D, dropout=0.0, batch_first=True, norm_first=True)
        self.fuse = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.type_head, self.key_head, self.value_head = nn.Linear(D, N_TYPES), nn.Linear(D, len(KEYS)), nn.Linear(D, 1)
        with torch.no_grad():  # a GUI prior: most actions are clicks, few are "done" (p(click) ~ 0.36 at init)
            self.type_head.bias.copy_(TYPE_BIAS)
        self.prior_entropy = prior_entropy
        self.len_head = nn.Linear(D, SPAN_LENS)
        self.start_head = nn.Linear(D, 1)
        self.point_head, self.point2_head = nn.Linear(D, 1 + SUB * SUB), nn.Linear(D, 1 + SUB * SUB)
        if small_heads:  # the action heads start at their priors, not at a random skew per seed
            with torch.no_grad():
                for head in (self.type_head, self.key_head, self.len_head, self.start_head, self.point_head, self.point2_head):
                    head.weight.mul_(0.01)
                    if head is not self.type_head:  # whose bias is the GUI prior, TYPE_BIAS
                        head.bias.zero_()
        if success_map:
            self.success_head = nn.Linear(D, 1)
            self.success_gain = nn.Parameter(torch.tensor(1.0))  # p(patch) ~ p(success there) x the rest, at first
        if affordance:
            self.affordance_head = nn.Linear(D, SUB * SUB)
            self.affordance_gain = nn.Parameter(torch.tensor(1.0))  # p(point) ~ p(the screen reacts there) x the rest
        if text_prior:  # how much to trust quotes and key names in the instruction (agent/instruction.py)
            self.quote_gain = nn.Parameter(torch.tensor(3.0))  # one quoted word among 9: p(start there) ~ 0.7
            self.key_name_gain = nn.Parameter(torch.tensor(3.0))  # one named key among 20: p(that key) ~ 0.5
            self.type_prior_gain = nn.Parameter(torch.tensor(1.0))  # p(TYPE), p(KEY) ~ 0.08 -> ~0.2 each
        if tools:
            from agent.tools import TOOL_F

            self.tool_call = nn.Linear(D, 1)  # the "call a tool" type logit, beside type_head's 9
            self.tool_query, self.tool_key = nn.Linear(D, D), nn.Linear(TOOL_F, D)
            with torch.no_grad():
                self.tool_call.bias.fill_(-1.0)  # a new option starts rarer than a click
        if recall:
            from agent.recall import MEM_F

            self.recall_gain = nn.Parameter(torch.tensor(0.0))  # how much to trust remembered targets (agent/recall.py)
            self.memory_proj = nn.Linear(MEM_F, D)  # recalled neighbours as tokens
            self.memory_type = nn.Parameter(torch.zeros(1, 1, D))
        if reading:
            self.word_select = nn.Linear(D, 1)
            self.match_gain = nn.Parameter(torch.tensor(4.0))
            self.density_gain = nn.Parameter(torch.tensor(0.0))  # learns how to treat the instruction's own text
            self.ignore_echo = ignore_echo  # the instruction written out on screen (a header) is no target
            if label_prior:  # a field or control just below a word it names: p(there) as at the word, at first
                self.label_gain = nn.Parameter(torch.tensor(4.0))
                if label_select:  # its own choice of word: the label a field is under is not itself the thing to click
                    with torch.random.fork_rng():  # drawn aside: every other module starts as it would without it
                        self.label_select = nn.Linear(D, 1)
        if history:  # drawn aside: every other module starts as it would without it
            with torch.random.fork_rng():
                self.history_proj = nn.Linear(HISTORY_F, D)  # the episode so far as one token (History)
                # and straight to the choices, from zero: which type, and queries for which word and which patch
                self.history_type, self.history_query = nn.Linear(HISTORY_F, N_TYPES), nn.Linear(HISTORY_F, 2 * D)
            for m in (self.history_type, self.history_query):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
            self.history_mark = nn.Parameter(torch.zeros(D))  # added to the patch the last decision pointed at
        # the fixed pixel-space word match (agent/reading.py); off: the learned matcher is the only visual query
        self.pixel_match = True
        self._shared_stem: nn.Module | None = None
        if self.learned_matcher:
            prior = getattr(encoder, "extras", {})  # a reading prior from `squirrel pretrain` (agent/pretrain.py)
            stem, ch = reading_stem(encoder)
            channels = prior["proj.weight"].shape[0] if "proj.weight" in prior else 8
            self.matcher = ReadingMatcher(stem, ch, channels)
            # the stem's last module, when it is the encoder's own (its first layers applied to the screen): the
            # forward reuses what the encoder computed instead of running the stem on the screen twice
            conv1 = getattr(encoder.visual, "conv1", None)
            if isinstance(conv1, nn.Sequential) and stem[-1] is conv1[len(stem) - 1] and sum(m is stem[-1] for m in conv1) == 1:
                self._shared_stem = stem[-1]
            self.learned_gain = nn.Parameter(torch.tensor(0.3))
            self._prior_gain = 1.0  # learned_gain when the learned matcher is the only visual query
            if "proj.weight" in prior and prior["proj.weight"].shape == self.matcher.proj.weight.shape:
                self.matcher.proj.load_state_dict({"weight": prior["proj.weight"], "bias": prior["proj.bias"]})
                if "scale" in prior:  # the sharpness pretraining found for the match: start the gain there
                    self._prior_gain = prior["scale"].item() / self.match_gain.item()

    def use_pixel_match(self, on: bool) -> "Policy":
        """Turn the fixed pixel-space word match on or off (off needs the learned matcher, which then gets the
        whole match weight: learned_gain 1, or the sharpness a pretrained prior found)."""
        if not on and not self.learned_matcher:
            raise ValueError("without the pixel match the policy needs learned_matcher=True to read")
        self.pixel_match = on
        if self.learned_matcher:
            with torch.no_grad():
                self.learned_gain.fill_(0.3 if on else self._prior_gain)
        return self

    def forward(self, x: torch.Tensor, instr: dict[str, torch.Tensor]) -> PolicyOutput:
        """x: preprocessed screens (B,3,H,W); instr: InstructionCache.batch() plus 'word_x' (B,K,3,16,96)."""
        stem = {}  # the encoder's own stride-4 features of x, when the learned matcher reads with its stem
        hook = self._shared_stem.register_forward_hook(lambda m, i, o: stem.setdefault("f", o)) \
            if self._shared_stem is not None else None
        try:
            tokens, pooled = self.encoder(x)  # (B,N,D), (B,D)
        finally:
            if hook is not None:
                hook.remove()
        if isinstance(instr.get("match"), Future):  # computed meanwhile on the matcher thread (prepare())
            instr["match"], echo = instr["match"].result()  # in place: the caller keeps the maps it stores with the step
            if echo is not None:
                instr["echo"] = echo
        B, N, D = tokens.shape
        mask = instr["word_mask"]  # (B,K) bool
        K = mask.shape[1]
        goal = self.goal_proj(instr["sentence"])[:, None]  # (B,1,D)
        words = self.word_proj(instr["words"]) + self.word_pos[:, :K]  # (B,K,D)
        mem = instr.get("memory") if hasattr(self, "memory_proj") else None  # (B,M,MEM_F) recalled neighbours
        if mem is not None and mem.shape[1]:
            mem_tokens, mem_pad = self.memory_proj(mem) + self.memory_type, ~instr["memory_mask"]  # (B,M,D), (B,M)
        else:
            mem_tokens, mem_pad = tokens[:, :0], torch.zeros(B, 0, dtype=torch.bool)
        M = mem_tokens.shape[1]
        head, hq, type_hist = [self.cls.expand(B, -1, -1) + goal, goal], None, 0.0
        if hasattr(self, "history_proj"):  # (B,HISTORY_F+1) History.features(); none given: the episode's start
            hist = instr["history"] if "history" in instr else History().features().expand(B, -1)
            last, f = hist[:, -1].long(), hist[:, :-1]  # (B,) the patch the last decision pointed at (-1: none)
            marked = F.one_hot(last.clamp(min=0), N).float() * (last >= 0).float()[:, None]  # (B,N)
            tokens = tokens + marked[..., None] * self.history_mark
            head.append(self.history_proj(f[:, None]))  # (B,1,D)
            hq = self.history_query(f).view(B, 2, D) / D ** 0.5  # (B,2,D) queries: which word, which patch
            type_hist = self.history_type(f)  # (B,9)
        H = len(head)
        seq = torch.cat([*head, words, mem_tokens, tokens], 1)  # (B,H+K+M+N,D)
        pad = torch.cat([torch.zeros(B, H, dtype=torch.bool), ~mask, mem_pad, torch.zeros(B, N, dtype=torch.bool)], 1)
        out = self.norm(self.fuse(seq, src_key_padding_mask=pad))
        h, w_out, p_out = out[:, 0], out[:, H:H + K], out[:, H + K + M:]  # (B,D), (B,K,D), (B,N,D)
        neg = torch.finfo(out.dtype).min
        start_logits = self.start_head(w_out)[..., 0].masked_fill(~mask, neg)  # (B,K)
        len_logits = self.len_head(h)[:, None].expand(B, K, SPAN_LENS)  # (B,K,4): the same for every start word
        key_logits, type_prior = self.key_head(h), torch.zeros(B, N_TYPES)
        if hasattr(self, "quote_gain") and "quoted" in instr:
            q, named = instr["quoted"].float(), instr["key_named"].float().amax(1)  # (B,K), (B,20)
            start_logits = start_logits + self.quote_gain * q
            len_logits = len_logits + self.quote_gain * quoted_runs(q)
            key_logits = key_logits + self.key_name_gain * named
            type_prior = type_prior.index_copy(1, torch.tensor([ActionType.KEY, ActionType.TYPE]),
                                               torch.stack([named.amax(1), q.amax(1)], 1))
            type_prior = type_prior + instr["type_named"].float()  # "Right-click ...": p(that type) ~ 0.08 -> ~0.2
        start_types = (TYPE_BIAS + type_prior).detach()  # (B,9) the policy's types at init, given this instruction
        type_prior = type_prior * self.type_prior_gain if hasattr(self, "type_prior_gain") else type_prior
        pl, pl2 = self.point_head(p_out), self.point2_head(p_out)  # (B,N,17)
        patch_logits, sub_logits = pl[..., 0], pl[..., 1:]
        if hq is not None:  # the patch to point at, given what was done last
            patch_logits = patch_logits + torch.einsum("bnd,bd->bn", p_out, hq[:, 1])
        success = None
        if hasattr(self, "success_head"):
            success = self.success_head(p_out)[..., 0]  # (B,N) logit: pointing here now ends in success
            patch_logits = patch_logits + self.success_gain * F.logsigmoid(success.detach())
        affordance = None
        if hasattr(self, "affordance_head"):
            affordance = self.affordance_head(p_out)  # (B,N,16) logit: pointing at this cell changes the screen
            react = self.affordance_gain * F.logsigmoid(affordance.detach())
            sub_logits, patch_logits = sub_logits + react, patch_logits + react.amax(-1)
        match = torch.zeros(B, N, SUB * SUB)
        gh, gw = self.grid
        cells = lambda a: a[:, : gh * SUB, : gw * SUB].reshape(B, gh, SUB, gw, SUB).permute(0, 1, 3, 2, 4).reshape(B, N, SUB * SUB)
        if self.reading:
            r = instr["match"] if self.pixel_match else 0.0  # (B,K,h,w): each word's template match, per 4 px cell
            if self.learned_matcher:
                r = r + self.learned_gain * self.matcher(x, instr["word_x"], instr["word_widths"], mask, stem.get("f"))
            sel = self.word_select(w_out)[..., 0]  # (B,K) which word to find
            if hq is not None:  # given what was done last: the radio's word, then Submit
                sel = sel + torch.einsum("bkd,bd->bk", w_out, hq[:, 0])
            sel = sel.masked_fill(~mask, neg).softmax(-1)
            m = torch.einsum("bk,bkhw->bhw", sel, r)  # (B,h,w)
            echo = None  # (B,h,w) where the instruction is written out, when a prior needs it
            if self._wants_echo():
                echo = instr["echo"] if "echo" in instr else instruction_echo(instr["match"], instr["word_widths"], mask)
            if self.ignore_echo and echo is not None:
                m = m.masked_fill(echo, 0.0)
            match = cells(m)  # (B,N,16)
            dens = cells(instruction_density(instr["match"] if self.pixel_match else r, mask))  # where the instruction is shown
            point = self.match_gain * match + self.density_gain * dens
            if hasattr(self, "label_gain") and echo is not None:  # the best match in the LABEL_CELLS cells above
                alone = (instr["match"] > SHOWN) & mask[..., None, None] & ~echo[:, None]  # (B,K,h,w) a word shown alone
                written = alone.any(1)  # (B,h,w)
                ml = m  # (B,h,w) the match of the word a target is under
                if hasattr(self, "label_select"):  # chosen among the words shown alone: a label is on the screen
                    shown = alone.flatten(2).any(-1)  # (B,K)
                    sl = self.label_select(w_out)[..., 0].masked_fill(~shown, neg).softmax(-1)  # (B,K)
                    ml = torch.einsum("bk,bkhw->bhw", sl, r)
                above = F.max_pool2d(F.pad(ml * written, (0, 0, LABEL_CELLS, 0))[:, None], (LABEL_CELLS, 1), stride=1)
                point = point + self.label_gain * cells(above[:, 0, : m.shape[1]].clamp(min=0))
            sub_logits = sub_logits + point
            patch_logits = patch_logits + point.amax(-1)
        if hasattr(self, "recall_gain") and instr.get("recall") is not None and instr["recall"].shape[1]:
            # (B,M,h,w) remembered successful targets matched on this screen, weighted by goal similarity
            prior = cells(instr["recall"].amax(1).clamp(min=0))  # (B,N,16): 0 where nothing remembered matches
            sub_logits = sub_logits + self.recall_gain * prior
            patch_logits = patch_logits + (self.recall_gain * prior).amax(-1)
        type_logits, tool_logits, tool_param, tool_point = self.type_head(h) + type_prior + type_hist, None, None, None
        if hasattr(self, "tool_call"):  # (B,T,F) descriptors and (B,T) masks of the tools offered (agent/tools.py)
            desc, avail, tool_param = instr["tool_desc"], instr["tool_mask"], instr["tool_param"]
            tool_point = instr["tool_point"]
            tool_logits = torch.einsum("bd,btd->bt", self.tool_query(h), self.tool_key(desc)) / D ** 0.5
            tool_logits = tool_logits.masked_fill(~avail, neg)
            call = self.tool_call(h).masked_fill(~avail.any(1, keepdim=True), neg)  # (B,1)
            type_logits = torch.cat([type_logits, call], 1)  # (B,10)
            start_types = torch.cat([start_types, torch.full((B, 1), -1.0)], 1)
        return PolicyOutput(type_logits, key_logits, start_logits, len_logits, patch_logits, sub_logits,
                            pl2[..., 0], pl2[..., 1:], self.value_head(h)[..., 0], pooled, p_out, match, tool_logits,
                            tool_param, success, affordance, start_types if self.prior_entropy else None, tool_point)

    def prepare(self, frames, instr: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 frames (B,H,W,3) and InstructionCache.batch() -> forward()'s inputs."""
        x = self.encoder.preprocess(frames)
        if self.reading and self.pixel_match and "match" not in instr:
            args = (frames, instr["word_pixels"], instr["word_widths"], instr["word_mask"])
            concurrent = self.concurrent_matching and len(frames) == 1 and not torch.is_grad_enabled()  # acting
            if concurrent:  # the maps (and where the instruction is written out) while the encoder runs
                instr = dict(instr, match=_MATCHER.submit(_match_and_echo, *args, self._wants_echo()))
            else:
                instr = dict(instr, match=match_maps(*args))
        if self.learned_matcher:
            wp = instr["word_pixels"]  # (B,K,16,96,3) uint8
            B, K = wp.shape[:2]
            wx = _prep_words(self.encoder, wp)
            instr = dict(instr, word_x=wx.reshape(B, K, 3, *wx.shape[2:]))
        return x, instr

    def _wants_echo(self) -> bool:
        return self.reading and self.pixel_match and (self.ignore_echo or hasattr(self, "label_gain"))

    # -- distributions -------------------------------------------------------------------------------
    def sample(self, o: PolicyOutput, greedy: bool = False) -> ActionBatch:
        def pick(logits):
            return logits.argmax(-1) if greedy else Categorical(logits=logits).sample()

        B = o.type_logits.shape[0]
        ar = torch.arange(B)
        patch, patch2 = pick(o.patch_logits), pick(o.patch2_logits)
        tool = pick(o.tool_logits) if o.tool_logits is not None else torch.zeros(B, dtype=torch.long)
        start = pick(o.start_logits)
        return ActionBatch(pick(o.type_logits), patch, pick(o.sub_logits[ar, patch]), patch2, pick(o.sub2_logits[ar, patch2]),
                           pick(o.key_logits), start, pick(o.len_logits[ar, start]), tool)

    def log_prob_entropy(self, o: PolicyOutput, a: ActionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|s) counting only the heads the action type uses, and the policy's entropy (B,)."""
        ar = torch.arange(a.type.shape[0])
        t = Categorical(logits=o.type_logits)
        heads = {
            "point": (Categorical(logits=o.patch_logits), Categorical(logits=o.sub_logits[ar, a.patch]), a.patch, a.sub),
            "point2": (Categorical(logits=o.patch2_logits), Categorical(logits=o.sub2_logits[ar, a.patch2]), a.patch2, a.sub2),
        }
        key, start = Categorical(logits=o.key_logits), Categorical(logits=o.start_logits)
        length = Categorical(logits=o.len_logits[ar, a.start])
        is_ptr = torch.isin(a.type, torch.tensor(POINTER_IDS))
        is_drag, is_key, is_type = a.type == ActionType.DRAG, a.type == ActionType.KEY, a.type == ActionType.TYPE
        pc, sc, pi, si = heads["point"]
        p2c, s2c, p2i, s2i = heads["point2"]
        logp = (t.log_prob(a.type) + is_ptr * (pc.log_prob(pi) + sc.log_prob(si)) + is_drag * (p2c.log_prob(p2i) + s2c.log_prob(s2i))
                + is_key * key.log_prob(a.key) + is_type * (start.log_prob(a.start) + length.log_prob(a.length)))
        pt = t.probs.detach()
        p_ptr = pt[:, POINTER_IDS].sum(-1)
        # the entropy bonus on the type: toward uniform, or (prior_entropy) toward the types it started with:
        # -KL(pi || prior) = H(pi) + sum pi log prior
        t_ent = t.entropy() if o.type_prior is None else t.entropy() + (t.probs * F.log_softmax(o.type_prior, -1)).sum(-1)
        ent = (t_ent + p_ptr * (pc.entropy() + sc.entropy()) / 2 + pt[:, ActionType.DRAG] * p2c.entropy() / 2
               + pt[:, ActionType.KEY] * key.entropy() + pt[:, ActionType.TYPE] * start.entropy())
        if o.tool_logits is not None:  # a tool call: its slot, the span it types if it takes one, where it points if it does
            tc = Categorical(logits=o.tool_logits)
            is_tool = a.type == TOOL
            takes_span = is_tool & o.tool_param[ar, a.tool]
            takes_point = is_tool & o.tool_point[ar, a.tool]
            logp = (logp + is_tool * tc.log_prob(a.tool) + takes_span * (start.log_prob(a.start) + length.log_prob(a.length))
                    + takes_point * (pc.log_prob(pi) + sc.log_prob(si)))
            ent = ent + pt[:, TOOL] * tc.entropy()
        return logp, ent

    # -- pixels <-> actions --------------------------------------------------------------------------
    def point(self, patch, sub) -> tuple[int, int]:
        """The pixel a patch and sub-cell choice points at (the centre of that sub-cell)."""
        gh, gw = self.grid
        p, s = int(patch), int(sub)
        step = self.patch // SUB
        return (p % gw) * self.patch + (s % SUB) * step + step // 2, (p // gw) * self.patch + (s // SUB) * step + step // 2

    def to_action(self, a: ActionBatch, i: int = 0) -> Action:
        """The env action for row i of a batch (pixel points from patch + sub-cell)."""
        t = ActionType(int(a.type[i]))
        x, y = self.point(a.patch[i], a.sub[i])
        x2, y2 = self.point(a.patch2[i], a.sub2[i])
        start = int(a.start[i])
        return Action(t, x, y, x2, y2, KEYS[int(a.key[i])] if t == ActionType.KEY else "", (start, start + int(a.length[i])))

    def from_action(self, action: Action) -> dict[str, int]:
        """Head indices for an env action (used to learn from actions not sampled by the policy)."""
        def cell(x, y):
            gh, gw = self.grid
            step = self.patch // SUB
            px, py = min(max(x, 0), gw * self.patch - 1), min(max(y, 0), gh * self.patch - 1)
            return (py // self.patch) * gw + px // self.patch, ((py % self.patch) // step) * SUB + (px % self.patch) // step

        patch, sub = cell(action.x, action.y)
        patch2, sub2 = cell(action.x2, action.y2)
        return {"type": int(action.type), "patch": patch, "sub": sub, "patch2": patch2, "sub2": sub2,
                "key": KEYS.index(action.key) if action.key else 0, "start": action.span[0],
                "length": min(max(action.span[1] - action.span[0], 0), SPAN_LENS - 1), "tool": 0}

    def as_batch(self, action: Action) -> ActionBatch:
        """An env action as a batch of one, as sample() would have drawn it."""
        return ActionBatch(**{k: torch.tensor([v]) for k, v in self.from_action(action).items()})


def quoted_runs(q: torch.Tensor) -> torch.Tensor:
    """q (B,K) 0/1 quoted words -> (B,K,SPAN_LENS): 1 where words start..start+l are exactly one quoted run."""
    B, K = q.shape
    pad = F.pad(q, (1, SPAN_LENS))  # (B,1+K+SPAN_LENS): zeros before the first and after the last word
    starts = q * (1 - pad[:, :K])  # quoted, the word before is not
    out, inside = [], starts
    for n in range(SPAN_LENS):
        inside = inside * pad[:, 1 + n: 1 + n + K]  # words start..start+n all quoted
        out.append(inside * (1 - pad[:, 2 + n: 2 + n + K]))  # and the run ends there
    return torch.stack(out, -1)


def _prep_words(encoder, wp: torch.Tensor) -> torch.Tensor:
    """(B,K,h,w,3) uint8 word renderings -> (B*K,3,h,w) normalised like the screen."""
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    return (wp.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
