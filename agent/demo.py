"""`squirrel demo`: a private virtual display, the playground, and the agent learning easy tasks from
scratch with a progress bar; then a report: a PNG of the learning curves and a PNG strip of an
episode the agent solved."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.learn_cli import LearnConfig, LearnRun
from agent.learner import AgentConfig
from squirrel import interrupt

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


@dataclass
class DemoConfig:
    """Watch the agent learn playground tasks from scratch, then get a report."""

    tasks: str = "click-shape,confirm-dialog"
    """Comma-separated playground tasks to learn (easy ones learn in minutes)."""
    steps: int = 4000
    """Env steps in all (a few minutes on 2 cores)."""
    home: str = ".squirrel/demo"
    """Where the demo agent, its curve and the report go."""
    fresh: bool = True
    """Start from scratch (remove an earlier demo agent in --home)."""
    display: str = ""
    """An existing X display to act on (to watch it). Empty: a private virtual display."""
    seed: int = 0
    """Random seed."""
    pretrain: bool = True
    """First make the reading prior the agent starts from (`squirrel pretrain`: once per machine, 4-10 minutes by machine;
    screens it draws itself, no labels, no downloads) when the cache has none for this encoder."""
    agent: AgentConfig = field(default_factory=AgentConfig)


def plot_curves(runs: list[dict], path: Path, width: int = 640, height: int = 360) -> None:
    """A small line chart of success vs env steps per task (PIL only)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 50, 20, width - 150, height - 40
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    xmax = max([p[0] for r in runs for p in r["curve"]] + [1])
    for frac in (0.0, 0.5, 0.8, 1.0):
        y = bottom - frac * (bottom - top)
        d.line([left, y, right, y], fill=(220, 220, 220))
        d.text((8, y - 6), f"{frac:.1f}", fill=(0, 0, 0))
    d.text((left, bottom + 8), "0", fill=(0, 0, 0))
    d.text((right - 60, bottom + 8), f"{xmax} steps", fill=(0, 0, 0))
    d.text((left, 4), "success rate (moving, per task)", fill=(0, 0, 0))
    for i, r in enumerate(runs):
        c = COLOURS[i % len(COLOURS)]
        pts = [(left + p[0] / xmax * (right - left), bottom - p[1] * (bottom - top)) for p in r["curve"]]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        d.text((right + 10, top + 16 * i), f"{r['task']} {r['final_success']:.2f}", fill=c)
    img.save(path)


def solved_strip(run: LearnRun, tries: int = 10) -> tuple[np.ndarray | None, str]:
    """Frames of a greedy episode the agent solves (with its clicks marked), and its instruction."""
    from agent.policy import History

    env, agent = run.env, run.agent
    for i in range(tries):
        task = run.tasks[i % len(run.tasks)]
        obs, _ = env.reset(seed=10_000 + i, options={"task": task})
        frames, done, info, hist = [], False, {}, History()
        while not done:
            a = agent.act(agent.obs_batch(obs, hist), greedy=True)[0]
            act = agent.policy.to_action(a)
            f = obs["screen"].copy()
            if act.type.name.endswith("CLICK"):
                y, x = min(act.y, f.shape[0] - 1), min(act.x, f.shape[1] - 1)
                f[max(y - 3, 0):y + 4, x] = (255, 0, 255)
                f[y, max(x - 3, 0):x + 4] = (255, 0, 255)
            frames.append(f)
            obs, _, term, trunc, info = env.step(act)
            hist.after(a, not np.array_equal(obs["screen"], f))
            done = term or trunc
        frames.append(obs["screen"])
        if info.get("success"):
            return np.concatenate(frames, 1), obs["instruction"]
    return None, ""


def _ensure_prior(encoder: str) -> None:
    from agent.pretrain import PretrainConfig, pretrain
    from perception.encoder import find_prior
    from squirrel.errors import UserError

    try:
        find_prior(encoder)
    except UserError:
        print("squirrel demo: first the reading prior the agent starts from (once per machine, 4-10 minutes by machine): "
              "finding words on GUI screens it draws itself")
        pretrain(PretrainConfig(encoder=encoder))


def main(argv: list[str], prog: str) -> int:
    import shutil

    from squirrel.config import parse

    cfg = parse(DemoConfig, argv, prog)
    home = Path(cfg.home)
    if cfg.fresh and (home / "checkpoints").exists():
        shutil.rmtree(home)
    tasks = [t for t in cfg.tasks.split(",") if t]
    if cfg.pretrain and cfg.agent.pretrained == "auto":
        _ensure_prior(cfg.agent.encoder)
    lc = LearnConfig(tasks=cfg.tasks, steps=cfg.steps, seed=cfg.seed, home=str(home), resume=not cfg.fresh,
                     display=cfg.display, curve_every=max(cfg.steps // 40, 50), window=30, agent=cfg.agent)
    run = LearnRun(lc, tasks)
    print(f"squirrel demo: learning {', '.join(tasks)} from scratch for {cfg.steps} steps "
          "(pixels in, XTest clicks out; the encoder learns too)")
    try:
        run.start()
        print(f"  acting on display {run.env.unwrapped.desktop.display}")
        try:
            run.loop()
        except KeyboardInterrupt:
            interrupt.handled()
            print("\nsquirrel demo: stopped early; writing the report of what it learned so far")
            run.save()
        run.report()
        report = home / "report"
        report.mkdir(parents=True, exist_ok=True)
        plot_curves(run.result()["runs"], report / "learning-curves.png")
        strip, instruction = solved_strip(run)
        if strip is not None:
            from PIL import Image

            Image.fromarray(strip).save(report / "solved-episode.png")
            print(f"  solved episode: {instruction!r} -> {report / 'solved-episode.png'}")
        else:
            print("  no greedy episode solved yet (learn longer: --steps)")
        print(f"  learning curves -> {report / 'learning-curves.png'}; TensorBoard logs in {home / 'tb'}")
    finally:
        run.close()
    return 0

