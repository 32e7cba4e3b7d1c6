import subprocess
import sys

from squirrel.cli import main


def test_usage_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "doctor" in out and "bench" in out


def test_unknown_command_is_one_line_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_doctor_runs_on_private_display():
    r = subprocess.run([sys.executable, "-m", "squirrel", "doctor"], capture_output=True, text=True, timeout=120)
    assert "display" in r.stdout and "Traceback" not in r.stderr
    assert r.returncode == 0, r.stdout + r.stderr


def test_doctor_help_shows_field_docs():
    r = subprocess.run([sys.executable, "-m", "squirrel", "doctor", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "existing X display" in r.stdout


def test_tasks_lists_every_source():
    r = subprocess.run([sys.executable, "-m", "squirrel", "tasks"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "squirrel/click-button-v0" in r.stdout and "squirrel/miniwob-click-test-v0" in r.stdout
    assert r.stdout.count("playground") >= 16 and r.stdout.count(" miniwob ") >= 125
