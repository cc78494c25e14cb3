"""Lynis (OS archive) audits the booted image: hardening index at least the profile's
hardening.lynis_min_score and no warning. The summary (index, warnings, suggestions)
goes to $HUBKILN_TEST_REPORTS/lynis.json for manifest.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from hubkiln.validation.audit import (
    LYNIS_AUDIT,
    LYNIS_REPORT,
    LYNIS_SKIP_REASON,
    LYNIS_UNIT,
    lynis_problems,
    lynis_skipped,
    lynis_summary,
    parse_lynis_report,
)

#: Proven in the VM only (the audit reads the kernel and boot): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("lynis")

#: Under TCG a full audit takes 15-25 minutes.
LYNIS_TIMEOUT = int(os.environ.get("HUBKILN_TEST_LYNIS_TIMEOUT", "2700"))


def profile_hardening() -> dict[str, Any]:
    """The profile's hardening section (HUBKILN_TEST_PROFILE), or the schema's defaults."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        return {"lynis_min_score": 80, "pip_audit_allow": []}
    from hubkiln.config.profile import load_profile

    return dict(load_profile(path)["hardening"])


def write_report(name: str, summary: dict[str, Any]) -> None:
    folder = os.environ.get("HUBKILN_TEST_REPORTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")



@pytest.fixture(scope="module")
def lynis(host: Any, hardening: dict[str, Any]):
    """The report of the audit: the one conftest started in the background at the first
    guest command (LYNIS_UNIT), waited for; else a run of its own."""
    with host.sudo():
        assert host.exists("lynis"), "lynis is not installed in the image"
        load = host.run(f"systemctl show -P LoadState {LYNIS_UNIT}").stdout.strip()
        if load == "loaded":
            deadline = time.monotonic() + LYNIS_TIMEOUT
            while (state := host.run(f"systemctl show -P SubState {LYNIS_UNIT}")
                   .stdout.strip()) == "running":
                assert time.monotonic() < deadline, f"Lynis still runs after {LYNIS_TIMEOUT} s"
                time.sleep(15)
            run = host.run(f"journalctl -u {LYNIS_UNIT} -o cat --no-pager | tail -n 40")
            detail = f"{LYNIS_UNIT} ended {state}:\n{run.stdout}"
        else:
            run = host.run(f"timeout {LYNIS_TIMEOUT} {LYNIS_AUDIT}")
            detail = f"exit {run.rc}:\n{run.stdout[-3000:]}{run.stderr[-2000:]}"
        report = host.file(LYNIS_REPORT)
        assert report.exists, f"lynis wrote no report ({detail})"
        return parse_lynis_report(report.content_string)


def test_lynis_score_and_warnings(request, host):
    if lynis_skipped(os.environ):
        # On the record (manifest.json, validation.reports.lynis), never silently.
        write_report("lynis.json", {"status": "not-run", "reason": LYNIS_SKIP_REASON})
        pytest.skip(LYNIS_SKIP_REASON)
    lynis = request.getfixturevalue("lynis")
    minimum = int(profile_hardening()["lynis_min_score"])
    summary = lynis_summary(lynis, minimum)
    write_report("lynis.json", summary)
    problems = lynis_problems(lynis, minimum)
    suggestions = "\n".join(f"  {s.test_id}: {s.message}" for s in lynis.suggestions)
    assert problems == [], "\n".join(problems) + f"\nremaining suggestions:\n{suggestions}"
