"""`squirrel pretrain`: the agent teaches its screen encoder to read, on screens it draws itself (DESIGN.md 5).

No human-labelled data, no oracle episodes, nothing downloaded: agent/screens.py lays out GUI-like frames
(buttons, labels, fields, checkboxes, lists, menus; pronounceable words, non-words, UI words, and near misses
of each other) at the agent's native task size and knows where every word is. The objective is the one the
policy's reading uses: a word is rendered as pixels (agent/instruction.py render_word, the query the policy
gets), passed through the *same* conv stem as the screen (the encoder's stride-4 features, shared weights,
plus the reading projection), and matched against the screen by normalised cross-correlation
(agent/policy.py ReadingMatcher). InfoNCE over every stride-4 cell of the screen: the cells at the word's
centre are the positive, every other cell (the other words, near misses, widgets, background) a negative.

    screens (B,3,H,W), queries (B,K,3,16,80) --stem+proj--> NCC maps (B,K,H/4,W/4) --*scale--> softmax over cells
    loss = cross-entropy against the word's centre cell (and its left/right neighbours)

The result is written as safetensors into the agent's cache (`$SQUIRREL_CACHE`, default ~/.cache/squirrel,
under pretrain/): the encoder's weights as `visual.*` (what `create_encoder(pretrained=...)` loads), the
reading projection as `reading.*` (picked up by the policy's learned matcher), with the config, the metrics
and a hash of the config in its metadata, and a JSON beside it. The same config finds the same file and is
not trained again. The agent starts from it with `--agent.pretrained auto` (or the file's path) and keeps
training it: nothing is frozen.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agent.instruction import WORD_W, render_word
from agent.screens import HEADER, HELDOUT_WORDS, click_button_screen, random_screen
from perception.encoder import prior_dir
from squirrel import interrupt
from squirrel.errors import UserError

OBJECTIVE_VERSION = 3  # bump when the generator or the loss changes: old cached priors are then not reused


@dataclass
class PretrainConfig:
    """Self-supervised reading prior for the screen encoder, on procedurally drawn GUI screens."""

    encoder: str = "squirrel-vit-a16-conv"
    """Screen encoder config to pretrain (the agent's default)."""
    steps: int = 3000
    """Optimiser steps."""
    batch: int = 12
    """Screens per step."""
    queries: int = 4
    """Words located per screen per step."""
    lr: float = 2e-3
    """Adam learning rate."""
    match_channels: int = 8
    """Channels of the reading projection on the stride-4 stem features (the policy's learned matcher takes
    the prior's)."""
    seed: int = 0
    """Random seed (screens and init)."""
    threads: int = 1
    """torch CPU threads."""
    eval_screens: int = 200
    """Screens for the final localisation check (fresh generated screens, and click-button screens in the
    held-out vocabulary)."""
    out: str = ""
    """Write the prior here instead of the cache (the cache is $SQUIRREL_CACHE/pretrain, default ~/.cache/squirrel)."""
    force: bool = False
    """Train again even when the cache already holds this config's prior."""
    json: str = ""
    """Also write the run's summary (minutes, loss curve, accuracies, path) here."""
    progress: bool = True
    """Show a progress bar."""


def config_hash(cfg: PretrainConfig) -> str:
    """What determines the weights: the encoder's architecture, the training settings and the objective."""
    from perception.encoder import encoder_config

    keys = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "eval_screens", "out", "force", "json", "progress")}
    blob = json.dumps({"cfg": keys, "encoder": encoder_config(cfg.encoder), "objective": OBJECTIVE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prior_path(cfg: PretrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    name = Path(cfg.encoder).stem if cfg.encoder.endswith(".json") else cfg.encoder
    return prior_dir() / f"{name}-{config_hash(cfg)}.safetensors"


class ReadingModel(torch.nn.Module):
    """The encoder plus the policy's learned word matcher on its conv stem (the parts pretraining trains)."""

    def __init__(self, encoder, channels: int = 8):
        super().__init__()
        from agent.policy import ReadingMatcher, reading_stem

        self.encoder = encoder
        stem, ch = reading_stem(encoder)
        self.matcher = ReadingMatcher(stem, ch, channels)
        self.log_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))  # NCC -> logits

    def maps(self, frames: np.ndarray, words: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B,H,W,3) uint8, B lists of K words -> NCC maps (B,K,h,w) and their rendered widths (B,K)."""
        from agent.policy import _prep_words

        B, K = len(words), len(words[0])
        rendered = [render_word(w) for row in words for w in row]
        px = torch.from_numpy(np.stack([p for p, _ in rendered])).reshape(B, K, *rendered[0][0].shape)
        widths = torch.tensor([w for _, w in rendered]).reshape(B, K)
        x = self.encoder.preprocess(frames)
        wx = _prep_words(self.encoder, px)
        r = self.matcher(x, wx.reshape(B, K, 3, *wx.shape[2:]), widths, torch.ones(B, K, dtype=torch.bool))
        return r, widths


def _targets(words, h: int, w: int, cell: int = 4) -> torch.Tensor:
    """(B,K,h*w) target distributions: the cells where the matcher's response for the word peaks when the
    rendered query lies exactly over it. The query canvas (WORD_H x WORD_W) has its text at row 1, centred;
    the response at cell (i, j) is for the canvas whose centre cell is (i, j). So the canvas's top-left is at
    (y0 - 1, x0 - (WORD_W - width) // 2), and its centre cell at that / cell + (WORD_H, WORD_W) / (2 cell).
    Between two cells (the word's offset is not a multiple of the cell), both are targets."""
    from agent.instruction import WORD_H

    B, K = len(words), len(words[0])
    t = torch.zeros(B, K, h, w)
    for b in range(B):
        for k, wd in enumerate(words[b]):
            width = min(wd.x1 - wd.x0, WORD_W)
            v = (wd.y0 - 1) / cell + WORD_H / (2 * cell)
            u = (wd.x0 - (WORD_W - width) // 2) / cell + WORD_W / (2 * cell)
            rows = sorted({min(max(int(np.floor(v)), 0), h - 1), min(max(int(np.ceil(v)), 0), h - 1)})
            cols = sorted({min(max(int(np.floor(u)), 0), w - 1), min(max(int(np.ceil(u)), 0), w - 1)})
            t[b, k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1.0
    return (t / t.sum((2, 3), keepdim=True)).flatten(2)


def sample_batch(rng: np.random.Generator, n: int, k: int, size: tuple[int, int]):
    """n screens, k queried words on each: (frames (n,H,W,3), [[Word]*k]*n)."""
    H, W = size
    frames, picks = [], []
    while len(frames) < n:
        frame, words = random_screen(rng, W, H)
        ok = [wd for wd in words if wd.x1 - wd.x0 <= WORD_W and wd.y1 <= H]
        if len(ok) < k:
            continue
        frames.append(frame)
        picks.append([ok[i] for i in rng.choice(len(ok), k, replace=False)])
    return np.stack(frames), picks


def loss_fn(model: ReadingModel, frames, picks) -> tuple[torch.Tensor, float]:
    r, _ = model.maps(frames, [[wd.text for wd in row] for row in picks])  # (B,K,h,w)
    logits = (r * model.log_scale.exp()).flatten(2)  # (B,K,h*w)
    t = _targets(picks, *r.shape[2:])
    loss = -(t * logits.log_softmax(-1)).sum(-1).mean()
    hit = (t.gather(-1, logits.argmax(-1, keepdim=True)) > 0).float().mean()
    return loss, float(hit)


@torch.no_grad()
def evaluate(model: ReadingModel, n: int, seed: int) -> dict[str, float]:
    """Localisation accuracy on fresh screens (top-1 cell at the word), and on click-button screens in the
    held-out vocabulary (the matcher's best cell for the target word lies on the target button)."""
    rng = np.random.default_rng(seed)
    size = model.encoder.image_size
    hits = []
    for _ in range(max(1, n // 20)):
        frames, picks = sample_batch(rng, 20, 1, size)
        hits.append(loss_fn(model, frames, picks)[1])
    on_button = np.zeros(2)  # the whole frame; below the header (which shows the instruction, so the word too)
    for _ in range(n):
        frame, instruction, (x0, y0, x1, y1), _ = click_button_screen(rng, HELDOUT_WORDS)
        word = instruction.split('"')[1]
        r, _ = model.maps(frame[None], [[word]])
        w = r.shape[3]
        for k, m in enumerate((r[0, 0], r[0, 0, HEADER // 4 + 1:])):
            i = int(m.argmax()) + (0 if k == 0 else (HEADER // 4 + 1) * w)
            cy, cx = (i // w) * 4 + 2, (i % w) * 4 + 2
            on_button[k] += x0 <= cx < x1 and y0 <= cy < y1
    return {"locate_acc": float(np.mean(hits)), "heldout_click_button_acc": on_button[0] / n,
            "heldout_click_button_body_acc": on_button[1] / n}


def save_prior(model: ReadingModel, path: Path, meta: dict) -> str:
    """Write encoder (`visual.*`) + reading projection (`reading.*`) atomically; returns the file's sha256."""
    from safetensors.torch import save_file

    sd = {f"visual.{k}": v for k, v in model.encoder.visual.state_dict().items()}
    sd.update({f"reading.proj.{k}": v for k, v in model.matcher.proj.state_dict().items()})  # Policy's matcher.proj
    sd["reading.scale"] = model.log_scale.detach().exp().reshape(1)
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        save_file(sd, str(tmp), metadata={k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(cfg: PretrainConfig) -> dict | None:
    """The summary of this config's prior when the cache holds it intact (its sha256 as recorded), else None."""
    path = prior_path(cfg)
    side = path.with_suffix(".json")
    if cfg.force or not path.is_file() or not side.is_file():
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if info.get("config_hash") != config_hash(cfg) or info.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return None
    return info


def _say(msg: str) -> None:
    print(msg, flush=True)


def pretrain(cfg: PretrainConfig, log=_say) -> dict:
    """Train (or find in the cache) the prior for `cfg`; returns its summary (path, minutes, metrics, hashes).
    Ctrl-C / SIGTERM stop early: nothing is written then (a half-trained prior must not be reused as this
    config's)."""
    from perception.encoder import create_encoder

    hit = cached(cfg)
    if hit is not None:
        log(f"pretrain: reusing {hit['path']} (config {hit['config_hash']}, trained in {hit['minutes']:.1f} min)")
        return dict(hit, reused=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = ReadingModel(create_encoder(cfg.encoder), cfg.match_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    log(f"pretrain: training the reading prior for {Path(cfg.encoder).stem}, {cfg.steps} steps (Ctrl-C stops it)")
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, unit="step", desc="pretrain", dynamic_ncols=True, file=sys.stderr)
    t0 = time.time()
    curve, ema_loss, ema_acc = [], None, None
    for step in range(1, cfg.steps + 1):
        interrupt.check()
        frames, picks = sample_batch(rng, cfg.batch, cfg.queries, model.encoder.image_size)
        loss, acc = loss_fn(model, frames, picks)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        if step % 25 == 0 or step == 1 or step == cfg.steps:
            curve.append([step, round(ema_loss, 4), round(ema_acc, 4)])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ema_loss:.3f}", locate=f"{ema_acc:.2f}")
    if bar is not None:
        bar.close()
    minutes = (time.time() - t0) / 60
    metrics = evaluate(model, cfg.eval_screens, cfg.seed + 10_000)
    path = prior_path(cfg)
    info = {"path": str(path), "config_hash": config_hash(cfg), "config": asdict(cfg), "encoder": cfg.encoder,
            "objective_version": OBJECTIVE_VERSION, "minutes": round(minutes, 2), "first_loss": curve[0][1],
            "final_loss": curve[-1][1], "curve": curve, **metrics}
    meta = {"encoder": cfg.encoder, "config": json.dumps(model.encoder.config), "pretrain": json.dumps(info)}
    info["sha256"] = save_prior(model, path, meta)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    log(f"pretrain: {minutes:.1f} min, loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}, locate {metrics['locate_acc']:.3f}, "
        f"held-out click-button {metrics['heldout_click_button_acc']:.3f}; wrote {path}")
    return dict(info, reused=False)


def main(argv: list[str] | None = None, prog: str = "pretrain") -> int:
    from squirrel.config import parse

    cfg = parse(PretrainConfig, sys.argv[1:] if argv is None else argv, prog)
    if cfg.steps < 1 or cfg.batch < 1 or cfg.queries < 1:
        raise UserError("--steps, --batch and --queries must be at least 1")
    info = pretrain(cfg)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(info, indent=1))
    print(info["path"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
