"""The README stays in sync with the schema and names the commands CI runs."""

from __future__ import annotations

from pathlib import Path

from hubkiln.docs import BEGIN, END, splice_reference

PROJECT = Path(__file__).resolve().parents[2]
README = (PROJECT / "README.md").read_text(encoding="utf-8")


def test_profile_reference_matches_the_schema():
    assert BEGIN in README and END in README
    assert splice_reference(README) == README, "run `invoke docs` to regenerate the reference"


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT / ".ci" / "run").read_text()
    command = "./kiln test"
    assert f"\n    {command}" in README or f"\n{command}" in README
    assert f"exec {command}" in ci


def test_host_packages_cover_the_preflight_table():
    from hubkiln.preflight import HOST_PACKAGES  # tool → Debian package

    listed = {line.strip() for line in (PROJECT / "host-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert set(HOST_PACKAGES.values()) - listed == set()
