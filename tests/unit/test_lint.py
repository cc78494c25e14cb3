"""Linters as tests: ruff on the Python code, shellcheck on provision/ and ./kiln."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = sorted(
    [*PROJECT.glob("provision/**/*.sh"), PROJECT / "kiln", PROJECT / ".ci" / "run"]
)


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    # provision/: the hub's helper and config run inside the guest, linted all the same.
    result = subprocess.run([str(ruff), "check", "hubkiln", "tests", "tasks.py", "provision"],
                            cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_shellcheck_is_clean(script):
    result = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", str(script)], cwd=PROJECT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_provision_scripts_to_lint():
    assert len([p for p in SHELL_SCRIPTS if "provision" in p.parts]) >= 4


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_scripts_fail_fast(script):
    head = script.read_text().splitlines()[:40]
    is_library = "lib" in script.parts
    assert is_library or any(line.strip() == "set -euo pipefail" for line in head)
