"""`squirrel playground`: run every playground task with its oracle and show what the agent will see."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PlaygroundConfig:
    """Show the playground tasks on a display, each solved by its scripted oracle."""

    tasks: str = ""
    """Comma-separated task names. Empty: all."""
    seeds: int = 3
    """Episodes per task."""
    display: str = ""
    """An existing X display to show them on (e.g. :1, to watch). Empty: a private virtual display."""
    screenshots: str = ""
    """Write a PNG per task (first frame of each episode, then the frame after each oracle step) here."""


def main(argv: list[str], prog: str) -> int:
    import os

    import numpy as np

    from agent.env import Desktop
    from agent.registration import PLAYGROUND_TASKS, make_env
    from squirrel.config import parse

    cfg = parse(PlaygroundConfig, argv, prog)
    tasks = [t for t in cfg.tasks.split(",") if t] or list(PLAYGROUND_TASKS)
    unknown = [t for t in tasks if t not in PLAYGROUND_TASKS]
    if unknown:
        from squirrel.errors import UserError

        raise UserError(f"unknown playground task {unknown[0]!r}; `squirrel tasks` lists them")
    if cfg.screenshots:
        os.makedirs(cfg.screenshots, exist_ok=True)
    failed = 0
    with Desktop(cfg.display or None) as desktop:
        print(f"playground on display {desktop.display}")
        for task in tasks:
            env = make_env(task, desktop=desktop)
            rows = []
            for seed in range(cfg.seeds):
                obs, _ = env.reset(seed=seed)
                frames, steps, info = [obs["screen"]], 0, {}
                while (a := env.unwrapped.oracle_action()) is not None:
                    obs, _, term, trunc, info = env.step(a)
                    frames.append(obs["screen"])
                    steps += 1
                    if term or trunc:
                        break
                ok = info.get("success") is True
                failed += not ok
                print(f"  {task:<18} seed {seed}: {'solved' if ok else 'FAILED'} in {steps} steps  | {env.unwrapped.instruction}")
                rows.append(np.concatenate(frames + [np.zeros_like(frames[0])] * (9 - len(frames)), 1))
            if cfg.screenshots:
                from PIL import Image

                Image.fromarray(np.concatenate(rows, 0)).save(os.path.join(cfg.screenshots, f"{task}.png"))
            env.close()
    print("all solved" if not failed else f"{failed} episode(s) not solved")
    return 1 if failed else 0
