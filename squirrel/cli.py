"""`squirrel <command> [<subcommand>] [options]`: dispatch to the packages, lazily.

Each command is a `module:function` taking the remaining argv; the module parses it with its own
config dataclass (one per entry point, fields documented for `--help`). Imports are lazy so that
`squirrel doctor` stays fast and never needs torch or a display.
"""

from __future__ import annotations

import importlib
import os
import sys

from squirrel import interrupt
from squirrel.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("squirrel.doctor:main", "check the machine: display, XTest, capture, Qt, torch, MiniLM"),
    "tasks": ("squirrel.listing:main", "list every available task with its source"),
    "demo": ("agent.demo:main", "watch the agent learn playground tasks from scratch; writes a report"),
    "learn": ("agent.learn_cli:main", "learn tasks from pixels, online: progress bar, TensorBoard, checkpoints, curve"),
    "playground": ("agent.playground_cli:main", "show the playground tasks on a display, solved by their oracle"),
    "panel": ("gui.app:main", "the Qt control panel: assign tasks, watch the agent learn, review tools"),
    "memory": ("memory.purge_cli:main", "memory purge: remove a task's or a period's data from an agent home"),
    "pretrain": ("agent.pretrain:main", "teach the screen encoder to read on screens it draws itself; cached prior"),
}
BENCH: dict[str, tuple[str, str]] = {
    "env": ("agent.bench_env:main", "desktop env: oracle success and speed, settle/capture/action ms"),
    "perception": ("perception.bench:main", "capture, preprocessing, encoder and instruction-encoder speed"),
    "latency": ("agent.bench_latency:main", "decision latency (capture to action) and the learning loop's steps/s"),
    "memory": ("memory.bench:main", "kNN query latency, insert throughput, database size"),
    "learn": ("agent.bench_learn:main", "learning curves: squirrel vs random vs SB3 PPO"),
    "continual": ("agent.bench_continual:main", "tasks learned in sequence: final success, forgetting, transfer"),
    "miniwob": ("agent.tasks.bench_miniwob:main", "MiniWoB++ in Chromium: learning curves from scratch, steps/s, reset ms"),
    "crash": ("agent.bench_crash:main", "kill -9 `squirrel learn` in every phase, resume: integrity, nothing lost"),
    "soak": ("agent.bench_soak:main", "a long learning run: RSS, database size and open files sampled, trend after warm-up"),
    "scale": ("agent.bench_scale:main", "learning on Ray: env steps/s and updates/s with 1 and 2 actors, policy lag"),
    "reading": ("agent.bench_reading:main", "click the button labelled WORD: capacity, then RL with/without prior and visual query"),
}


def _usage() -> str:
    lines = ["usage: squirrel <command> [options]   (squirrel <command> --help for its options)", "", "commands:"]
    for name, (_, doc) in COMMANDS.items():
        lines.append(f"  {name:<12} {doc}")
    lines.append(f"  {'bench':<12} benchmarks writing JSON: {', '.join(BENCH)}")
    return "\n".join(lines)


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        if not rest or rest[0] not in BENCH:
            print("usage: squirrel bench <name> [--json PATH]\n\nbenchmarks:")
            for name, (_, doc) in BENCH.items():
                print(f"  {name:<12} {doc}")
            return 0 if rest and rest[0] in ("-h", "--help") else 2
        target, prog, rest = BENCH[rest[0]][0], f"squirrel bench {rest[0]}", rest[1:]
    elif cmd in COMMANDS:
        target, prog = COMMANDS[cmd][0], f"squirrel {cmd}"
    else:
        print(f"squirrel: unknown command {cmd!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    interrupt.install()  # SIGTERM acts as Ctrl-C, and neither is lost (squirrel/interrupt.py says how one can be)
    try:
        return int(_load(target)(rest, prog) or 0)
    except UserError as e:
        print(f"squirrel: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `squirrel tasks | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("squirrel: stopped.", file=sys.stderr)
        return 130
