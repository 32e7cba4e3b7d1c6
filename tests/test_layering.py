"""The layering rule of DESIGN.md, as import-linter contracts in pyproject.toml."""

import os
import shutil
import subprocess
import sys


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or "lint-imports"
    r = subprocess.run([exe], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: " in r.stdout and " broken" in r.stdout and "0 broken" in r.stdout
