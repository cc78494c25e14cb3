"""Linters as tests: ruff on the Python code, shellcheck on provision/ (its scripts and the
shell tools it installs) and ./kiln; the package's shape: small modules, each with its scope."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SHEBANGS = ("#!/usr/bin/env bash", "#!/bin/bash", "#!/bin/sh")


def guest_shell_tools() -> list[Path]:
    """The shell programs the image installs (provision/files/, no .sh suffix)."""
    return [path for path in PROJECT.glob("provision/files/**/*") if path.is_file()
            and path.suffix == "" and path.read_bytes()[:32].decode(errors="replace")
            .startswith(SHEBANGS)]


SHELL_SCRIPTS = sorted(
    [*PROJECT.glob("provision/**/*.sh"), *guest_shell_tools(), PROJECT / "kiln",
     PROJECT / ".ci" / "run"]
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
    lines = script.read_text().splitlines()
    is_library = "lib" in script.parts
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    only_exec = commands[0].startswith("exec ")  # a wrapper: nothing runs before exec
    assert is_library or only_exec or any(line.strip() == "set -euo pipefail"
                                          for line in lines[:40])


def test_the_guests_shell_tools_are_linted_too():
    names = {path.name for path in guest_shell_tools()}
    assert {"hubkiln-prepare-user", "hubkiln-data-disk", "hubkiln-autogroup-nice"} <= names


MAX_MODULE_LINES = 400
MODULES = sorted((PROJECT / "hubkiln").rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_each_module_is_small_and_says_its_scope(module):
    text = module.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, "split it by concern"
    assert ast.get_docstring(ast.parse(text)), "start with a docstring that says its scope"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_modules_import_each_other_at_the_top(module):
    hidden = [f"line {node.lineno}: {node.module}" for node in ast.walk(ast.parse(
        module.read_text(encoding="utf-8"))) if isinstance(node, ast.ImportFrom)
        and node.col_offset and (node.module or "").startswith("hubkiln")]
    assert hidden == [], "import at the top, so the stages' dependencies show"


def test_the_package_shows_the_stages():
    folders = {p.name for p in (PROJECT / "hubkiln").iterdir() if (p / "__init__.py").exists()}
    assert folders == {"config", "stages", "machine", "validation", "capacity", "deliver"}
