"""The invoke tasks as a user runs them: listed, failing with Exit, writing nothing on errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).with_name("invoke"))


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INVOKE, *args], cwd=PROJECT, capture_output=True, text=True)


def test_every_task_is_described():
    listing = invoke("--list").stdout
    for name in ("render", "validate", "build", "clean", "docs", "check", "test", "seed", "launch"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(name))
        assert len(line.split()) > 1, f"task {name} has no description"


def test_bad_profile_fails_with_every_problem_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken-course.yaml"
    bad.write_text("name: broken-course\ndescription: d\nhub:\n  limits:\n    memory: lots\n"
                   "    cpu: -2\n  authenticator: ldap\n")
    result = invoke("render", f"--profile={bad}")
    assert result.returncode == 1
    assert "the profile has 3 problems" in result.stderr
    assert "broken-course.yaml: hub.limits.memory: 'lots' is not a size like 2G" in result.stderr
    assert "hint:" in result.stderr
    assert not (PROJECT / "output" / "broken-course").exists()


def test_render_writes_the_templates():
    result = invoke("render", "--profile=ci")
    assert result.returncode == 0, result.stderr
    assert (PROJECT / "output" / "ci" / "packer" / "sources.pkr.hcl").exists()
