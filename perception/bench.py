"""`squirrel bench perception`: capture, preprocessing, screen-encoder and instruction-encoder speed.

Targets on the 2-core CPU (issue 4): default encoder batch-1 forward under 8 ms median; capture +
preprocessing under 1 ms. Figures are medians of wall-clock times with `torch.set_num_threads`;
`*_best_round_median` is the median of the quietest fifth of the run, and `machine_load_*` says
how much other work competed for the CPU (on a shared 2-core machine it can inflate figures 5x).
"""

from __future__ import annotations

import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from squirrel.config import parse
from squirrel.errors import UserError

TASK_W, TASK_H = 160, 210  # the task area (MiniWoB++ size)


@dataclass
class PerceptionBenchConfig:
    """Measure capture, preprocessing, screen-encoder and instruction-encoder speed on this machine."""

    json: str = ""
    """Write the results to this JSON file (nothing is written when empty)."""
    display: str = ""
    """An existing X display to capture from (e.g. :1). Empty: start a private Xvfb for the capture figures."""
    encoders: tuple[str, ...] = ()
    """Encoder configs to measure. Empty: every config in perception/configs."""
    forward_repeats: int = 200
    """Timed batch-1 forward passes per encoder."""
    backward_repeats: int = 5
    """Timed forward+backward passes at batch 32 per encoder."""
    capture_repeats: int = 500
    """Timed 160x210 grabs (and preprocessings)."""
    threads: int = 2
    """torch CPU threads."""


def _times_ms(fn, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _p(q: float, xs: list[float]) -> float:
    return round(statistics.quantiles(xs, n=100)[int(q) - 1], 4) if len(xs) > 1 else round(xs[0], 4)


def _stats(key: str, xs: list[float], rounds: int = 5) -> dict:
    """Median and p90 of all samples, and the median of the quietest of `rounds` consecutive
    slices: on a shared machine the last one is what the code costs when it has the CPU."""
    k = max(1, len(xs) // rounds)
    best = min(statistics.median(xs[i:i + k]) for i in range(0, len(xs) - k + 1, k))
    return {f"{key}_median": _p(50, xs), f"{key}_p90": _p(90, xs), f"{key}_best_round_median": round(best, 4)}


@contextmanager
def _private_xvfb(timeout_s: float = 10.0):
    """Start Xvfb on a free display number (-displayfd); yield ":N"; stop it afterwards."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise UserError("Xvfb is not installed; run scripts/setup, or pass --display :N")
    tmp = tempfile.mkdtemp(prefix="squirrel-bench-x-")
    auth = os.path.join(tmp, "Xauthority")
    open(auth, "w").close()
    r, w = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-auth", auth],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    try:
        buf, deadline = b"", time.monotonic() + timeout_s
        while not buf.endswith(b"\n") and proc.poll() is None and time.monotonic() < deadline:
            if select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                buf += os.read(r, 64) or b""
        if not buf.endswith(b"\n"):
            raise UserError(f"Xvfb did not start within {timeout_s:.0f} s; pass --display :N for a display you own")
        yield ":" + buf.decode().strip()
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _bench_capture(cfg: PerceptionBenchConfig, display: str, image_size, mean, std) -> dict:
    from perception.capture import ScreenCapture
    from perception.preprocess import preprocess

    with ScreenCapture(display) as cap:
        grab = _times_ms(lambda: cap.grab(0, 0, TASK_W, TASK_H), cfg.capture_repeats, 20)
        frame = cap.grab(0, 0, TASK_W, TASK_H)
        prep = _times_ms(lambda: preprocess(frame, image_size, mean, std), cfg.capture_repeats, 20)
        both = _times_ms(lambda: preprocess(cap.grab(0, 0, TASK_W, TASK_H), image_size, mean, std), cfg.capture_repeats, 20)
        notes = cap.performance_status
    return {**_stats("capture_ms", grab), **_stats("preprocess_ms", prep), **_stats("capture_preprocess_ms", both),
            "capture_notes": notes}


def _bench_encoder(cfg: PerceptionBenchConfig, name: str) -> dict:
    import numpy as np
    import torch

    from perception.encoder import create_encoder

    enc = create_encoder(name)
    rng = np.random.default_rng(0)
    x1 = enc.preprocess(rng.integers(0, 256, (TASK_H, TASK_W, 3), dtype=np.uint8))
    x32 = enc.preprocess(rng.integers(0, 256, (32, TASK_H, TASK_W, 3), dtype=np.uint8))
    enc.eval()
    with torch.inference_mode():
        fwd = _times_ms(lambda: enc(x1), cfg.forward_repeats, 10)
    enc.train()

    def step():
        tokens, pooled = enc(x32)
        (tokens.square().mean() + pooled.square().mean()).backward()
        enc.zero_grad(set_to_none=True)

    bwd = _times_ms(step, cfg.backward_repeats, 1)
    return {**_stats("forward_b1_ms", fwd), "fwd_bwd_b32_ms_median": _p(50, bwd),
            "fwd_bwd_b32_ms_min": round(min(bwd), 1), "params": sum(p.numel() for p in enc.parameters()),
            "image_size": list(enc.image_size), "patch_size": enc.patch_size, "grid": list(enc.grid), "dim": enc.dim}


def _bench_text() -> dict:
    from perception.text import InstructionEncoder

    te = InstructionEncoder()
    t = time.perf_counter()
    te.encode("Click the button labelled OK.")
    first = (time.perf_counter() - t) * 1e3
    words = ["Submit", "Cancel", "Tuesday", "blue", "search", "Alice", "next page", "the third item", "Save as", "Zurich"]
    fresh = iter([f"Click on the {w} button, then type {w.lower()} {i} into the text field." for i, w in enumerate(words * 3)])
    cold = _times_ms(lambda: te.encode(next(fresh)), 28, 2)
    cached = _times_ms(lambda: te.encode("Click the button labelled OK."), 500, 10)
    return {"cold_ms": _p(50, cold), "cached_ms": _p(50, cached), "first_call_ms": round(first, 1)}


def _machine_load() -> dict:
    """Load average and CPU pressure (share of time some task waited for a CPU, last 10 s): other
    work on the machine inflates every figure here, so it is recorded with them."""
    out = {"loadavg_1min": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/pressure/cpu") as f:
            out["cpu_pressure_some_avg10"] = float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def main(argv: list[str], prog: str = "squirrel bench perception") -> int:
    cfg = parse(PerceptionBenchConfig, argv, prog)
    import torch

    from perception.encoder import DEFAULT_ENCODER, create_encoder, list_encoders

    torch.set_num_threads(cfg.threads)
    # the default first, the slowest (largest input, widest) last
    names = list(cfg.encoders) or sorted(list_encoders(), key=lambda n: (n != DEFAULT_ENCODER, "224" in n, n))
    known = set(list_encoders())
    for n in names:
        if n not in known:
            raise UserError(f"unknown encoder {n!r}; choose from {', '.join(sorted(known))}")
    default = create_encoder(DEFAULT_ENCODER)
    out: dict = {"default": DEFAULT_ENCODER, "threads": cfg.threads, "cpus": os.cpu_count(),
                 "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                 "machine_load_before": _machine_load()}

    print(f"capture + preprocess: {TASK_W}x{TASK_H} region, {cfg.capture_repeats} repeats", flush=True)
    if cfg.display:
        out.update(_bench_capture(cfg, cfg.display, default.image_size, default.mean, default.std))
    else:
        with _private_xvfb() as display:
            out.update(_bench_capture(cfg, display, default.image_size, default.mean, default.std))
    print(f"  capture {out['capture_ms_median']:.3f} ms, preprocess {out['preprocess_ms_median']:.3f} ms, "
          f"both {out['capture_preprocess_ms_median']:.3f} ms (median)", flush=True)

    out["configs"] = {}
    for n in names:
        print(f"encoder {n}: {cfg.forward_repeats} batch-1 forwards, {cfg.backward_repeats} batch-32 forward+backward", flush=True)
        r = out["configs"][n] = _bench_encoder(cfg, n)
        print(f"  {r['params'] / 1e6:.2f} M params, {r['grid'][0]}x{r['grid'][1]} patches: forward b1 "
              f"{r['forward_b1_ms_median']:.2f} ms (quietest round {r['forward_b1_ms_best_round_median']:.2f}), "
              f"fwd+bwd b32 {r['fwd_bwd_b32_ms_median']:.0f} ms (median)", flush=True)

    print("instruction encoder (all-MiniLM-L6-v2)", flush=True)
    out["text"] = _bench_text()
    t = out["text"]
    print(f"  first call (load) {t['first_call_ms']:.0f} ms, cold {t['cold_ms']:.2f} ms, cached {t['cached_ms']:.4f} ms", flush=True)

    out["machine_load_after"] = _machine_load()
    if out["machine_load_after"].get("cpu_pressure_some_avg10", 0) > 20:
        print(f"note: other work competed for the CPU during this run ({out['machine_load_after']}); "
              "figures are inflated", flush=True)
    d = out["configs"].get(DEFAULT_ENCODER)
    out["targets"] = {"forward_b1_ms": 8.0, "capture_preprocess_ms": 1.0,
                      "forward_met": None if d is None else d["forward_b1_ms_median"] < 8.0,
                      "capture_preprocess_met": out["capture_preprocess_ms_median"] < 1.0}
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {cfg.json}")
    return 0
