"""Corrupt or hostile files: each gets a one-line message and a non-zero exit, never a traceback or garbage loaded."""

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.tasks.user import MAX_OUTPUT, TaskFileError, load_task, parse_task, run_checker
from memory.db import DB_NAME, AgentDB, schema_version
from squirrel.errors import UserError
from trainer.checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")
GOOD_TASK = """name = "note"
instruction = "Type hello"
command = ["true"]
[window]
geometry = [0, 0, 160, 210]
[checker]
kind = "command"
command = ["true"]
"""


def squirrel(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "squirrel", *args], capture_output=True, text=True, timeout=timeout)
    return r


def assert_one_line_error(r, *words):
    assert r.returncode not in (0, None), r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("squirrel: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- checkpoints -----------------------------------------------------------------------------------------
def _two_checkpoints(d: Path) -> list[Path]:
    m = torch.nn.Linear(64, 64)
    save_checkpoint(d, 1, {"m": m}, None, {}, {"n": 1})
    with torch.no_grad():
        m.weight.add_(1.0)
    save_checkpoint(d, 2, {"m": m}, None, {}, {"n": 2})
    return list_checkpoints(d)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "bitflip-header", "empty", "no-sidecar", "sidecar-garbage"])
def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage):
    old, new = _two_checkpoints(tmp_path)
    raw = bytearray(new.read_bytes())
    if damage == "truncate":
        new.write_bytes(raw[: len(raw) // 2])
    elif damage == "bitflip":
        raw[-7] ^= 0x10  # inside the tensor data: still parses as safetensors, only the checksum catches it
        new.write_bytes(raw)
    elif damage == "bitflip-header":
        raw[12] ^= 0x01
        new.write_bytes(raw)
    elif damage == "empty":
        new.write_bytes(b"")
    elif damage == "no-sidecar":
        new.with_suffix(".json").unlink()
    else:
        new.with_suffix(".json").write_bytes(os.urandom(200))
    with pytest.raises(UserError) as e:
        load_checkpoint(new)
    assert "\n" not in str(e.value) and new.name in str(e.value)
    messages = []
    path, _, meta = load_latest(tmp_path, warn=messages.append)
    assert path == old and meta["counters"] == {"n": 1}
    assert len(messages) == 1 and "using the previous checkpoint" in messages[0]


@pytest.mark.slow
def test_resume_with_every_checkpoint_corrupt_starts_fresh_and_says_so(tmp_path):
    args = ["learn", "--tasks", "fake-click", "--steps", "40", "--home", str(tmp_path), "--no-progress",
            "--no-tensorboard", "--agent.encoder", TINY, "--agent.rollout", "32", "--checkpoint-every", "20"]
    assert squirrel(*args).returncode == 0
    for p in list_checkpoints(tmp_path / "checkpoints"):
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(raw)
    r = squirrel(*args, "--resume")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.count("is corrupt (checksum mismatch); using the previous checkpoint") >= 2
    assert "no checkpoint" in r.stdout and "starting from scratch" in r.stdout


@pytest.mark.slow
def test_resume_with_other_options_names_the_flags_the_checkpoint_was_written_with(tmp_path):
    args = ["learn", "--tasks", "fake-click", "--steps", "20", "--home", str(tmp_path), "--no-progress",
            "--no-tensorboard", "--agent.encoder", TINY, "--agent.rollout", "16", "--checkpoint-every", "20"]
    assert squirrel(*args, "--agent.no-memory").returncode == 0
    r = squirrel(*args, "--steps", "40", "--resume")  # recall on (the default) adds a learned gain
    assert_one_line_error(r, "does not fit", "--agent.no-memory")


# -- the database ------------------------------------------------------------------------------------------
def test_database_from_a_newer_schema_is_refused_by_learn(tmp_path):
    AgentDB.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        c.execute(f"PRAGMA user_version = {schema_version() + 5}")
    r = squirrel("learn", "--tasks", "fake-click", "--steps", "10", "--home", str(tmp_path), "--no-progress",
                 "--agent.encoder", TINY)
    assert_one_line_error(r, "newer Squirrel", f"v{schema_version() + 5}")


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b"SQLite format 3\x00" + os.urandom(4000)])
def test_garbage_database_file_is_refused_by_learn(tmp_path, content):
    (tmp_path / DB_NAME).write_bytes(content)
    r = squirrel("learn", "--tasks", "fake-click", "--steps", "10", "--home", str(tmp_path), "--no-progress",
                 "--agent.encoder", TINY)
    assert_one_line_error(r, str(tmp_path / DB_NAME))


# -- a second agent on the same home ------------------------------------------------------------------------
def test_second_agent_on_the_same_home_is_refused_with_the_pid(tmp_path):
    cmd = [sys.executable, "-m", "squirrel", "learn", "--tasks", "fake-click", "--steps", "100000", "--home",
           str(tmp_path), "--no-progress", "--no-tensorboard", "--agent.encoder", TINY, "--agent.rollout", "32"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / DB_NAME).exists() and time.time() < deadline:
            time.sleep(0.1)
        r = squirrel("learn", "--tasks", "fake-click", "--steps", "10", "--home", str(tmp_path), "--no-progress",
                     "--agent.encoder", TINY)
        assert_one_line_error(r, f"home {tmp_path} is in use by pid {first.pid}", "--home")
        assert first.poll() is None  # the first agent runs on, untouched
    finally:
        first.kill()
        first.wait(30)


def test_lock_of_a_killed_agent_is_taken_over(tmp_path):
    from agent.home import HomeLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from agent.home import HomeLock; "
                               f"HomeLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError, match=f"in use by pid {holder.pid}"):
        HomeLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    assert (tmp_path / "lock").read_text().strip() == str(holder.pid)  # a stale pid in the file ...
    with HomeLock(tmp_path) as lock:  # ... is no obstacle
        assert lock.held and (tmp_path / "lock").read_text().strip() == str(os.getpid())
    with HomeLock(tmp_path):  # released, so it can be taken again
        pass


def test_learn_run_holds_the_home_while_it_runs(tmp_path):
    from agent.home import HomeLock
    from agent.learn_cli import LearnConfig, LearnRun
    from agent.learner import AgentConfig

    run = LearnRun(LearnConfig(tasks="fake-click", steps=10, home=str(tmp_path), tensorboard=False, progress=False,
                               agent=AgentConfig(encoder=TINY, threads=1)), ["fake-click"])
    try:
        run.start()
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            HomeLock(tmp_path).acquire()
    finally:
        run.close()
    HomeLock(tmp_path).acquire().release()


# -- task files ---------------------------------------------------------------------------------------------
toml_scalars = st.one_of(st.text(max_size=50), st.integers(-(2**63), 2**63 - 1), st.booleans(),
                         st.floats(allow_nan=False), st.text(alphabet=";|&$`()<>*?!\\\"' \n\t", max_size=30),
                         st.just("x" * 100_000))


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string, escapes included
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v) if not isinstance(v, float) or math.isfinite(v) else "0.0"


values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=4), st.lists(st.integers(-5, 5000), max_size=5))
fields = st.sampled_from(["name", "instruction", "command", "max_steps", "size", "other"])
sub_fields = st.sampled_from(["title", "geometry", "kind", "command", "path", "text", "timeout_s"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(fields, values, max_size=6), st.dictionaries(sub_fields, values, max_size=3),
       st.dictionaries(sub_fields, st.one_of(values, st.sampled_from(["command", "ask", "file_contains"])), max_size=4))
def test_fuzzed_task_tables_are_accepted_or_refused_in_one_line(top, window, checker):
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in top.items())
    text += "[window]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in window.items())
    text += "[checker]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in checker.items())
    try:
        spec = parse_task(text, "fuzz.toml")
    except TaskFileError as e:
        assert str(e).startswith("fuzz.toml: ") and "\n" not in str(e)[:200]
        return
    assert spec.command and all(isinstance(a, str) for a in spec.command)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=500).map(lambda s: s.encode("utf-16")),
                 st.text(max_size=500).map(lambda s: b"\xef\xbb\xbf" + GOOD_TASK.encode() + s.encode()),
                 st.integers(1, 5000).map(lambda n: b"a = " + b"[" * n + b"]" * n),
                 st.integers(1, 5000).map(lambda n: b"a" + b".a" * n + b" = 1"),
                 st.binary(max_size=64).map(lambda b: GOOD_TASK.encode().replace(b"hello", b)),
                 st.binary(max_size=8).map(lambda b: GOOD_TASK.encode()[:100] + b + GOOD_TASK.encode()[100:])))
def test_fuzzed_task_bytes_never_crash_the_loader(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("fuzz") / "t.toml"
    p.write_bytes(raw)
    try:
        load_task(p)
    except TaskFileError as e:
        assert str(e).startswith(str(p)) and len(str(e).splitlines()) == 1


@pytest.mark.parametrize("raw,words", [
    (b"name = \"x\xff\"", ["not UTF-8"]),
    ("a = " + "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    ("name = \"" + "n" * 1_000_000 + "\"", ["larger than"]),
    (GOOD_TASK.replace('"note"', '"no te; rm -rf /"'), ["field 'name'"]),
    (GOOD_TASK.replace('"Type hello"', '"' + "y" * 5000 + '"'), ["field 'instruction'"]),
    ("\ufeff" + GOOD_TASK.replace("[checker]", "[checker]\ntimeout_s = 1e9"), ["checker.timeout_s"]),
    (GOOD_TASK.encode("utf-16"), ["not UTF-8"]),
])
def test_bad_task_files_through_the_cli(tmp_path, raw, words):
    p = tmp_path / "bad.toml"
    p.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    assert_one_line_error(squirrel("tasks", "--check", str(p)), str(p), *words)


def test_good_task_file_with_a_byte_order_mark_through_the_cli(tmp_path):
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + GOOD_TASK.encode())
    r = squirrel("tasks", "--check", str(p))
    assert r.returncode == 0 and "squirrel/user-note-v0" in r.stdout, r.stderr


# -- the checker command ------------------------------------------------------------------------------------
METACHARACTERS = ["; touch {f}", "&& touch {f}", "| touch {f}", "$(touch {f})", "`touch {f}`", "\ntouch {f}",
                  "> {f}", "{f}; true"]


@pytest.mark.parametrize("meta", METACHARACTERS)
def test_checker_command_never_runs_a_shell(tmp_path, meta):
    marker = tmp_path / "pwned"
    arg = meta.format(f=marker)
    ok, out = run_checker({"kind": "command", "command": ["echo", arg]}, None)  # an argument, echoed verbatim
    assert ok and out == arg + "\n" and not marker.exists()
    with pytest.raises(UserError, match="checker command not found") as e:  # and never a command line
        run_checker({"kind": "command", "command": ["true " + arg]}, None)
    assert "\n" not in str(e.value).replace(arg, "") and not marker.exists()


def test_checker_timeout_kills_what_it_started(tmp_path):
    flag = tmp_path / "late"
    t = time.monotonic()
    ok, out = run_checker({"kind": "command", "timeout_s": 0.5,
                           "command": ["sh", "-c", f"(sleep 2; touch {flag}) & sleep 30"]}, None)
    assert not ok and "timed out after 0.5 s" in out and time.monotonic() - t < 5
    time.sleep(2.5)
    assert not flag.exists()  # the checker's own children were killed with it


def test_checker_output_is_bounded_while_it_runs(tmp_path):
    # `yes` writes gigabytes in 3 s: only the last MAX_OUTPUT bytes are ever held
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok, out = run_checker({"kind": "command", "timeout_s": 3, "command": ["yes", "spam"]}, None)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not ok and "timed out" in out and grown_mb < 50
    ok, out = run_checker({"kind": "command", "command": [sys.executable, "-c",
                           "import sys; sys.stdout.write('a' * 10**7); sys.stderr.write('END')"]}, None)
    assert ok and len(out.encode()) <= MAX_OUTPUT and out.endswith("END")
