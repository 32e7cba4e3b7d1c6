"""`squirrel bench crash`: kill `squirrel learn` with SIGKILL at chosen moments, resume it, check nothing is lost.

Each round starts `squirrel learn --resume` on one home, waits for the phase it aims at, kills the
process (and everything it started) with SIGKILL, and checks the home while nothing runs:

- the database passes `PRAGMA integrity_check` and `foreign_key_check`;
- no committed episode is lost: every episode that had ended before any earlier kill is still there,
  and every episode whose recording had returned in the killed run is in the database;
- the next resume succeeds and starts from the newest checkpoint that verifies, saying so when it
  skipped a newer, broken one; so the env-step counter never goes back past the last checkpoint.

Phases are aimed at from outside: the learn process runs with a few functions wrapped to write one
byte to a pipe when they start and end (recording an episode, an update, a checkpoint); the kill
lands at a random moment inside the phase, and the bytes read before the kill say where it landed.
`squirrel learn` itself never mines tools (the panel's tool view does, in its own process), so the
mining phase runs the panel's miner (`ToolLibrary.mine_new`) on the same home beside the learner and
kills both while the miner is inside a mining pass.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.home import scratch_home
from squirrel.errors import UserError

PHASES = ("acting", "learning", "checkpointing", "mining")
# markers the instrumented learner writes (with the time): begin/end of recording an episode, an update, a checkpoint;
# the miner: begin/end of a mining pass. Each is one byte and a float64 CLOCK_MONOTONIC time (shared by all processes).
BEGIN = {b"R": "recording", b"U": "learning", b"C": "checkpointing", b"M": "mining"}
END = {b"r": b"R", b"u": b"U", b"c": b"C", b"m": b"M"}
RECORD = struct.Struct("<cd")


def _mark(fd: int, m: bytes) -> None:
    os.write(fd, RECORD.pack(m, time.monotonic()))  # 9 bytes: atomic on a pipe


@dataclass
class BenchCrashConfig:
    """Kill `squirrel learn` with SIGKILL at random moments in each phase, resume, and check nothing is lost."""

    json: str = ""
    """Write the counts and every round here (JSON)."""
    kills: int = 20
    """SIGKILLs in all, spread evenly over acting, learning, checkpointing and tool mining."""
    tasks: str = "fake-click"
    """Tasks to learn (fake-click needs no display; playground tasks start their own Xvfb)."""
    encoder: str = ""
    """Screen encoder config for the learner. Empty: the agent's default."""
    checkpoint_every: int = 150
    """Env steps between checkpoints (small, so that kills often land near one)."""
    rollout: int = 64
    """Env steps between updates."""
    seed: int = 0
    """Seed of the kill moments (and of the learner)."""
    home: str = ""
    """Agent home to use (kept afterwards). Empty: a temp folder, deleted at the end."""
    phase_timeout_s: float = 180.0
    """Longest wait for a start or a phase before killing anyway."""


# -- processes -----------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process it started (Xvfb, apps), which survive it in their own sessions."""
    pids = descendants(proc.pid)
    proc.kill()
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


# -- the instrumented child and the miner -----------------------------------------------------------------
def _child(fd: int, argv: list[str]) -> int:
    """Run `squirrel learn argv`, writing a marker byte at the start and end of each phase to `fd`."""
    import agent.learner as learner
    import trainer.checkpoint as checkpoint
    from agent.learn_cli import LearnRun
    from squirrel import cli

    def marked(fn, begin: bytes, end: bytes):
        def wrapper(*a, **k):
            _mark(fd, begin)
            try:
                return fn(*a, **k)
            finally:
                _mark(fd, end)
        return wrapper

    learner.ppo_update = marked(learner.ppo_update, b"U", b"u")
    checkpoint.save_checkpoint = marked(checkpoint.save_checkpoint, b"C", b"c")
    LearnRun._record = marked(LearnRun._record, b"R", b"r")
    return cli.main(["learn", *argv])


def _miner(fd: int, home: str) -> int:
    """Mine tools on `home`'s database in a loop, as the panel's tool view does; M/m mark each pass."""
    from memory.db import AgentDB
    from memory.tools import ToolLibrary

    with AgentDB.open(home) as db:
        lib = ToolLibrary(db)
        while True:
            _mark(fd, b"M")
            lib.mine_new()
            _mark(fd, b"m")
            time.sleep(0.2)  # let a few episodes end, so that each pass has work


class Marked:
    """A child process writing timed phase markers into a pipe we read."""

    def __init__(self, args: list[str], env: dict):
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.bench_crash", str(w), *args], pass_fds=(w,),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        os.close(w)
        self.fd, self._buf = r, b""
        self.marks: list[tuple[bytes, float]] = []
        self.out, self.err = b"", b""
        for f in (r, self.proc.stdout.fileno(), self.proc.stderr.fileno()):
            os.set_blocking(f, False)

    def pump(self, timeout: float = 0.0) -> None:
        """Read whatever the child wrote (markers, stdout, stderr), waiting up to `timeout` for anything."""
        fds = [self.fd, self.proc.stdout.fileno(), self.proc.stderr.fileno()]
        if timeout > 0:
            select.select(fds, [], [], timeout)
        for fd in fds:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                if fd == self.fd:
                    self._buf += chunk
                elif fd == self.proc.stdout.fileno():
                    self.out += chunk
                else:
                    self.err += chunk
        n = len(self._buf) // RECORD.size
        self.marks += [RECORD.unpack_from(self._buf, i * RECORD.size) for i in range(n)]
        self._buf = self._buf[n * RECORD.size:]

    def pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pump(end - time.monotonic())

    def phase_at(self, t: float) -> str:
        """Where the child was at time `t`: inside recording/learning/checkpointing/mining, else acting."""
        last = None
        for m, ts in self.marks:
            if ts > t:
                break
            last = m
        if last is None:
            return "starting"
        return BEGIN.get(last, "acting")

    def count(self, marker: bytes, until: float = float("inf")) -> int:
        return sum(m == marker and ts <= until for m, ts in self.marks)

    def durations(self) -> dict[str, list[float]]:
        """Seconds each finished phase took, by phase."""
        out: dict[str, list[float]] = {}
        began: dict[bytes, float] = {}
        for m, ts in self.marks:
            if m in BEGIN:
                began[m] = ts
            elif m in END and END[m] in began:
                out.setdefault(BEGIN[END[m]], []).append(ts - began.pop(END[m]))
        return out

    def close(self) -> None:
        self.pump()
        os.close(self.fd)
        self.proc.stdout.close()
        self.proc.stderr.close()


# -- checking a home ----------------------------------------------------------------------------------------
def inspect_home(home: Path) -> dict:
    """Database health, ended episodes and the checkpoint a resume should use (nothing may be running)."""
    from memory.db import AgentDB
    from trainer.checkpoint import list_checkpoints, load_checkpoint

    with AgentDB.open(home) as db:
        integrity = db.integrity_check()
        fk = db.read("PRAGMA foreign_key_check")
        ended = {r[0]: r[1] for r in db.read("SELECT id, outcome FROM episodes WHERE outcome IN ('success', 'failure')")}
        n_all = db.read("SELECT count(*), coalesce(max(id), 0) FROM episodes")[0]
    expected, skipped = 0, []
    for path in reversed(list_checkpoints(home / "checkpoints")):
        try:
            _, meta = load_checkpoint(path)
            expected = int(meta["step"])
            break
        except UserError:
            skipped.append(path.name)
    stale = [p for p in (home / "checkpoints").glob("*.tmp")]  # temp files of a write the kill cut short
    return {"integrity": integrity, "foreign_key_errors": len(fk), "ended": ended, "episodes": n_all[0],
            "max_episode_id": n_all[1], "expected_step": expected, "broken_newest": skipped,
            "stale_tmp_files": len(stale), "stale_tmp_bytes": sum(p.stat().st_size for p in stale)}


def _resumed_step(out: str) -> int | None:
    """The env step a `--resume` start reported (0 when it found no checkpoint)."""
    for line in out.splitlines():
        if "resumed from" in line and "at" in line:
            return int(line.rsplit(" at ", 1)[1].split()[0])
        if "starting from scratch" in line:
            return 0
    return None


def main(argv: list[str], prog: str) -> int:
    from squirrel.config import parse

    cfg = parse(BenchCrashConfig, argv, prog)
    if cfg.kills < 1:
        raise UserError("--kills must be at least 1")
    with scratch_home(cfg.home, "squirrel-crash-") as home:
        result = run(cfg, home, log=print)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=1))
    c = result["counts"]
    print(f"{c['kills']} kills ({', '.join(f'{k} {v}' for k, v in c['by_phase'].items())}): "
          f"{c['resumes_ok']}/{c['kills']} resumes ok, integrity ok {c['integrity_ok']}/{c['checks']}, "
          f"{c['lost_episodes']} committed episodes lost, {c['fallbacks_with_message']} fallbacks to an older "
          f"checkpoint (all with a message: {c['fallbacks_silent'] == 0}), final run "
          f"{'ok' if result['final']['ok'] else 'FAILED'}")
    return 0 if result["ok"] else 1


def run(cfg: BenchCrashConfig, home: Path, log=print) -> dict:
    """Start, aim, kill, check, `cfg.kills` times; then one last resume that runs to its end."""
    rnd = random.Random(cfg.seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    learn_args = ["--tasks", cfg.tasks, "--home", str(home), "--resume", "--no-progress", "--seed", str(cfg.seed),
                  "--checkpoint-every", str(cfg.checkpoint_every), "--agent.rollout", str(cfg.rollout),
                  "--agent.threads", "1"] + (["--agent.encoder", cfg.encoder] if cfg.encoder else [])
    durations: dict[str, list[float]] = {}  # measured phase lengths, to aim the next kills
    rounds: list[dict] = []
    problems: list[str] = []
    expected = {"expected_step": 0, "broken_newest": [], "ended": {}}
    last_step = 0
    for i in range(cfg.kills + 1):
        final = i == cfg.kills
        end = max(last_step, expected["expected_step"]) + 2 * cfg.checkpoint_every  # the last run: two more checkpoints
        child = Marked(["--steps", str(end if final else 10**9), *learn_args], env)
        miner = None
        try:
            deadline = time.monotonic() + cfg.phase_timeout_s
            rec = {"round": i, **_check_resume(child, expected, last_step, deadline, problems)}
            last_step = max(last_step, rec["resumed_step"] or 0)
            if final:
                try:
                    child.proc.wait(cfg.phase_timeout_s * 3)
                except subprocess.TimeoutExpired:
                    problems.append(f"final run: not done after {cfg.phase_timeout_s * 3:.0f} s")
                    kill_tree(child.proc)
                child.pump()
                rec.update(exit_code=child.proc.returncode, traceback="Traceback" in child.err.decode(errors="replace"))
                break
            target = PHASES[i % len(PHASES)]
            if target == "mining":
                miner = _start_miner(child, home, env, rnd, deadline)
            rec.update(_kill_inside(target, child, miner, rnd, durations, deadline + 60))
            if not rec["alive"]:
                problems.append(f"round {i}: the process died before the kill: {child.err.decode(errors='replace')[-300:]}")
        finally:
            for p in (child, miner):
                if p is not None:
                    if p.proc.poll() is None:
                        kill_tree(p.proc)
                    p.close()
        for p in (child, miner):
            for k, v in (p.durations() if p is not None else {}).items():
                durations.setdefault(k, []).extend(v)
        state = inspect_home(home)  # nothing runs now
        rec.update(_check_home(state, expected["ended"], rec["recorded_this_run"], i, problems))
        expected = state
        rounds.append(rec)
        log(f"kill {i + 1}/{cfg.kills}: aimed at {rec['target']}, landed in {rec['phase']} "
            f"(learner {rec['learner_phase']}) after {rec['delay_s']} s; resumed at {rec['resumed_step']}; "
            f"integrity {state['integrity']}; {len(state['ended'])} episodes ended, {rec['lost']} lost")
    return _summary(rounds, rec, inspect_home(home), expected["ended"], home, cfg, problems)


def _check_resume(child: Marked, expected: dict, last_step: int, deadline: float, problems: list[str]) -> dict:
    """The resume must start from the newest checkpoint that verifies, and say so when it skipped a broken one."""
    while _resumed_step(child.out.decode(errors="replace")) is None and child.proc.poll() is None \
            and time.monotonic() < deadline:
        child.pump(0.1)
    child.pump()
    out, err = child.out.decode(errors="replace"), child.err.decode(errors="replace")
    got = _resumed_step(out)
    warned = "using the previous checkpoint" in out + err
    ok = got == expected["expected_step"] and got >= last_step and (warned or not expected["broken_newest"])
    if not ok:
        problems.append(f"resumed at {got}, expected {expected['expected_step']} (message: {warned}); "
                        f"stderr: {err[-300:]}")
    return {"resumed_step": got, "expected_step": expected["expected_step"], "skipped": expected["broken_newest"],
            "skip_message": warned, "resume_ok": ok}


def _start_miner(child: Marked, home: Path, env: dict, rnd: random.Random, deadline: float) -> Marked:
    """The panel's miner on the same home, once the learner has recorded a few episodes; one pass timed."""
    while not child.count(b"c") and child.proc.poll() is None and time.monotonic() < deadline + 60:
        child.pump(0.05)
    child.pump_for(rnd.uniform(1.0, 4.0))
    miner = Marked(["--mine", str(home)], env)
    while not miner.count(b"m") and miner.proc.poll() is None and time.monotonic() < deadline + 60:
        miner.pump(0.01)
        child.pump()
    return miner


def _kill_inside(target: str, child: Marked, miner: Marked | None, rnd: random.Random, durations: dict,
                 deadline: float) -> dict:
    """SIGKILL at a random moment inside `target` (acting: within 0.5 s after an update ends); the markers
    read afterwards say where each process really was."""
    if target not in ("checkpointing", "mining"):  # one new checkpoint first, so that the learning curve moves on
        while not child.count(b"c") and child.proc.poll() is None and time.monotonic() < deadline:
            child.pump(0.05)
    watched = miner or child
    begin = {"acting": b"u", "learning": b"U", "checkpointing": b"C", "mining": b"M"}[target]
    for _ in range(50):  # a moment inside the phase; if the phase ended first, the next one
        before = watched.count(begin)
        while watched.count(begin) == before and watched.proc.poll() is None and time.monotonic() < deadline:
            watched.pump(0.002)
            if watched is miner:
                child.pump()
        if target == "acting":
            typical = 0.5
        else:
            seen = (durations.get(target, []) + watched.durations().get(target, []))[-20:] or [0.1]
            typical = sorted(seen)[len(seen) // 2]
        delay = rnd.uniform(0.0, typical)
        began = [ts for m, ts in watched.marks if m == begin]
        t_kill = (began[-1] if len(began) > before else time.monotonic()) + delay
        while time.monotonic() < t_kill:
            watched.pump(max(0.0, min(0.002, t_kill - time.monotonic())))
        if target == "acting" or watched.phase_at(time.monotonic()) == target:
            break
    alive = all(p.proc.poll() is None for p in (watched, child))
    t_kill = time.monotonic()
    for p in ([miner] if miner else []) + [child]:  # the aimed-at process first
        kill_tree(p.proc)
        p.pump()
    return {"target": target, "delay_s": round(delay, 4), "alive": alive, "learner_phase": child.phase_at(t_kill),
            "phase": watched.phase_at(t_kill), "recorded_this_run": child.count(b"r", until=t_kill)}


def _check_home(state: dict, ended_before: dict, recorded: int, i: int, problems: list[str]) -> dict:
    """Database health; no committed episode lost: every one ended before any earlier kill is still there, and
    every episode whose recording returned in the killed run is in the database."""
    lost = [e for e in ended_before if e not in state["ended"]]
    new_ended = [e for e in state["ended"] if e not in ended_before]
    if state["integrity"] != "ok" or state["foreign_key_errors"]:
        problems.append(f"round {i}: integrity {state['integrity']!r}, {state['foreign_key_errors']} fk errors")
    if lost or len(new_ended) < recorded:
        problems.append(f"round {i}: {len(lost)} earlier episodes lost; {len(new_ended)} new ended episodes "
                        f"< {recorded} recorded")
    return {"integrity": state["integrity"], "foreign_key_errors": state["foreign_key_errors"],
            "episodes_ended": len(state["ended"]), "new_ended": len(new_ended), "lost": len(lost),
            "checkpoint_for_resume": state["expected_step"], "broken_newest": state["broken_newest"],
            "stale_tmp_files": state["stale_tmp_files"], "stale_tmp_bytes": state["stale_tmp_bytes"]}


def _summary(rounds: list[dict], final_rec: dict, state: dict, ended_before: dict, home: Path,
             cfg: BenchCrashConfig, problems: list[str]) -> dict:
    if final_rec.get("exit_code") != 0 or final_rec.get("traceback"):
        problems.append(f"final run: exit {final_rec.get('exit_code')}, traceback {final_rec.get('traceback')}")
    curve = json.loads((home / "curve.json").read_text()) if (home / "curve.json").exists() else {}
    lost = [e for e in ended_before if e not in state["ended"]]
    points = [[s for s, _ in r["curve"]] for r in curve.get("runs", [])]
    monotone = all(a < b for pts in points for a, b in zip(pts, pts[1:]))  # the curve only ever moves on
    final = {"ok": final_rec.get("exit_code") == 0 and not final_rec.get("traceback") and final_rec["resume_ok"]
             and state["integrity"] == "ok" and not lost and monotone, "exit_code": final_rec.get("exit_code"),
             "curve_points": sum(map(len, points)), "curve_monotone": monotone,
             "resumed_step": final_rec.get("resumed_step"), "env_steps": curve.get("env_steps"),
             "episodes_ended": len(state["ended"]), "integrity": state["integrity"], "lost": len(lost)}
    by_phase: dict[str, int] = {}
    for r in rounds:
        by_phase[r["phase"]] = by_phase.get(r["phase"], 0) + 1
    resumes = rounds[1:] + [final_rec]  # the starts that followed a kill
    counts = {
        "kills": len(rounds), "by_phase": by_phase, "by_target": {p: sum(r["target"] == p for r in rounds) for p in PHASES},
        "resumes_ok": sum(r["resume_ok"] for r in resumes),
        "checks": len(rounds) + 1, "integrity_ok": sum(r["integrity"] == "ok" for r in rounds) + (state["integrity"] == "ok"),
        "lost_episodes": sum(r["lost"] for r in rounds) + len(lost),
        # resumes that found the newest checkpoint broken (a kill while writing it) and used the one before
        "fallbacks_with_message": sum(bool(r["skipped"]) and r["skip_message"] for r in resumes),
        "fallbacks_silent": sum(bool(r["skipped"]) and not r["skip_message"] for r in resumes),
        "broken_checkpoints_left_by_kills": len({n for r in rounds for n in r["broken_newest"]}),
        "resumed_steps": [r["resumed_step"] for r in resumes],
        # checkpoint temp files left behind by kills mid-write (nothing removes them): disk a crash costs
        "stale_tmp_files": state["stale_tmp_files"], "stale_tmp_bytes": state["stale_tmp_bytes"],
    }
    return {"config": asdict(cfg), "counts": counts, "rounds": rounds, "final": final, "problems": problems,
            "ok": not problems and final["ok"]}


def _main_module(argv: list[str]) -> int:
    fd = int(argv[0])
    if argv[1:2] == ["--mine"]:
        return _miner(fd, argv[2])
    return _child(fd, argv[1:])


if __name__ == "__main__":
    sys.exit(_main_module(sys.argv[1:]))
