"""Which machines prove an image, and the validation record they leave.

`plan_engines` says which engine runs which share of tests/image: under KVM the VM
runs them all; under emulation a container of the image runs the user-space tests at
native speed and the VM what needs the image's own kernel, boot and firewall (the
tests' `needs` marks, tests/image/conftest.py). `combine_records` makes one record of
their runs, which says which engine proved which tests and what was not run;
`record_validation` stores it in manifest.json and marks a failed image.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln.errors import BuildError
from hubkiln.stages import artifacts

FAILED_MARKER = "VALIDATION-FAILED"


@dataclass
class Summary:
    """What a pytest run reported."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.passed > 0


def parse_junit(xml_text: str) -> Summary:
    """Counts and failing test ids from a pytest junit XML report."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    summary = Summary()
    failures = []
    for suite in suites:
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            failure, error = case.find("failure"), case.find("error")
            if failure is not None:
                summary.failed += 1
                failures.append(describe_failure(name, failure))
            elif error is not None:
                summary.errors += 1
                failures.append(describe_failure(name, error))
            elif case.find("skipped") is not None:
                summary.skipped += 1
            else:
                summary.passed += 1
    summary.failures = tuple(failures)
    return summary


def describe_failure(name: str, element: ET.Element) -> str:
    """`test id: first line of the failure message` (the message says what broke)."""
    message = (element.get("message") or element.text or "").strip().splitlines()
    first = message[0] if message else element.tag
    return f"{name}: {first[:300]}"


def read_reports(folder: Path) -> dict[str, Any]:
    """The JSON summaries tests left in HUBKILN_TEST_REPORTS (e.g. Lynis, pip-audit)."""
    reports: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            reports[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            reports[path.stem] = {"error": f"unreadable report: {error}"}
    return reports


#: Which engine proves which tests (`invoke test --engine`): `vm` boots the image under
#: qemu and runs every test; `container` boots the same image in systemd-nspawn at
#: native speed and runs the tests that need no VM (tests/image/conftest.py, NEEDS);
#: `auto` is the VM under KVM, and under emulation (TCG) both: the container for the
#: user-space tests, the VM for what needs the image's own kernel, boot and firewall.
ENGINES = ("auto", "vm", "container")


IN_CONTAINER, NEEDS_VM = "not needs", "needs"


def plan_engines(engine: str, accelerator: str) -> list[tuple[str, str | None]]:
    """The runs of one validation: (engine, pytest -m expression or None for all) (pure)."""
    if engine not in ENGINES:
        raise BuildError(f"unknown test engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")
    if engine == "vm" or (engine == "auto" and accelerator == "kvm"):
        return [("vm", None)]
    if engine == "container":
        return [("container", IN_CONTAINER)]
    return [("container", IN_CONTAINER), ("vm", NEEDS_VM)]


def combine_records(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One validation record from the record of each engine's run (pure). A run of only
    the container says so: the tests that need the VM were not run."""
    records = [r for r in runs.values() if r["status"] != "not-run"]
    combined: dict[str, Any] = {
        "status": "passed" if all(r["status"] == "passed" for r in records) else "failed",
        "at": records[-1].get("at"),
        "engines": runs,
        "seconds": round(sum(r.get("seconds", 0) for r in records), 1),
        "passed": sum(r.get("passed", 0) for r in records),
        "failed": sum(r.get("failed", 0) for r in records),
        "skipped": sum(r.get("skipped", 0) for r in records),
        "failures": [f"[{name}] {failure}" for name, r in runs.items()
                     for failure in r.get("failures", [])],
        "reports": {k: v for r in records for k, v in r.get("reports", {}).items()},
        "log": records[-1].get("log"),
    }
    if "vm" in runs and runs["vm"]["status"] != "not-run":
        combined["accelerator"] = runs["vm"].get("accelerator")
        combined["boot_to_ssh_seconds"] = runs["vm"].get("boot_to_ssh_seconds")
        if "boot" in runs["vm"]:
            combined["boot"] = runs["vm"]["boot"]
        combined["guest_panics"] = runs["vm"].get("guest_panics", [])
    elif "vm" in runs:
        combined["not_run"] = f"the VM's share: {runs['vm']['reason']}"
    else:
        combined["not_run"] = ("the tests marked needs(...) (kernel, boot, firewall, limits, "
                               "reboot, Lynis): they need the VM engine")
    return combined


def record_validation(out: Path, record: dict[str, Any]) -> None:
    """Store the outcome in manifest.json; mark a failed image so nobody ships it."""
    manifest = artifacts.read_manifest(out)
    if manifest is None:
        raise BuildError(f"no manifest.json in {out}", hint="run `invoke build` first")
    manifest["validation"] = record
    artifacts.write_manifest(out, manifest)
    marker = out / FAILED_MARKER
    if record["status"] == "passed":
        marker.unlink(missing_ok=True)
    else:
        marker.write_text(
            "This image FAILED validation; do not use it.\n"
            + "".join(f"  {name}\n" for name in record["failures"])
            + f"See {record['log']}.\n"
        )


def failure_message(record: dict[str, Any]) -> str:
    """A message that says what broke and where to look."""
    failed = f": {record['failed']} test(s) failed" if record["failed"] else ""
    lines = [f"the image failed validation{failed}"]
    lines += [f"  {name}" for name in record["failures"][:20]]
    return "\n".join(lines)
