"""The invoke tasks as a user runs them: listed, failing with Exit, writing nothing on errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).with_name("invoke"))


def invoke(*args: str, output: Path | None = None) -> subprocess.CompletedProcess:
    """Run a task; with `output`, its outputs go there (never into a build that runs)."""
    env = {**os.environ, **({"HUBKILN_OUTPUT": str(output)} if output else {})}
    return subprocess.run([INVOKE, *args], cwd=PROJECT, capture_output=True, text=True, env=env)


def test_every_task_is_described():
    listing = invoke("--list").stdout
    for name in ("render", "build", "validate", "loadtest", "test", "clean", "docs", "seed",
                 "launch", "publish"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(name))
        assert len(line.split()) > 1, f"task {name} has no description"


def test_bad_profile_fails_with_every_problem_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken-course.yaml"
    bad.write_text("name: broken-course\ndescription: d\nhub:\n  limits:\n    memory: lots\n"
                   "    cpu: -2\n  authenticator: ldap\n")
    result = invoke("render", f"--profile={bad}", output=tmp_path / "output")
    assert result.returncode == 1
    assert "the profile has 3 problems" in result.stderr
    assert "broken-course.yaml: hub.limits.memory: 'lots' is not a size like 2G" in result.stderr
    assert "hint:" in result.stderr
    assert not (tmp_path / "output").exists()


def test_render_writes_the_templates(tmp_path):
    # Into its own output folder: rendering into output/ would pull the templates from
    # under a build that is running (Packer's working folder).
    result = invoke("render", "--profile=ci", output=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ci" / "packer" / "sources.pkr.hcl").exists()
