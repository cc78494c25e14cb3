"""Validate a built image: boot it fresh and prove it with testinfra and HTTPS checks.

`validate_image` boots the artifact on a snapshot with a test-only NoCloud
seed (a throwaway admin key and test launch settings: one admin, two
students), waits for SSH, then runs `tests/image/` with pytest-testinfra over
SSH and with HTTPS checks from the host through the forwarded port, and
powers the VM off. The outcome and a summary go into `manifest.json`; a
failed image is marked failed there (and in `VALIDATION-FAILED`), never
presented as good.

Limits: one boot per validation; tests that need a reboot do it themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import accel, artifacts, launch, seed
from .errors import BuildError
from .profile import PROJECT_DIR, Profile, parse_size
from .progress import Progress
from .render import output_dir
from .vm import Vm, VmSpec, free_port

IMAGE_TESTS = PROJECT_DIR / "tests" / "image"
FAILED_MARKER = "VALIDATION-FAILED"
TEST_ADMIN = "teacher"
TEST_STUDENTS = ("student1", "student2")
#: A guest port nothing may reach: the firewall test listens there and expects a drop.
BLOCKED_GUEST_PORT = 8099


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


def validation_memory_mib(profile: Profile) -> int:
    """Guest memory for validation: one student's limit plus room for the hub and another
    student, so that a student past the limit meets the cgroup limit, not the guest's."""
    limit_mib = parse_size(profile["hub"]["limits"]["memory"]) >> 20
    return max(2048, limit_mib + 1536)


def validation_launch_document(public_key: str) -> dict[str, Any]:
    """The launch settings every validation boots with."""
    return {
        "hostname": "hubkiln-test",
        "admins": [TEST_ADMIN],
        "users": list(TEST_STUDENTS),
        "ssh_authorized_keys": [public_key],
    }


def pytest_command(junit: Path, ssh_port: int, key: Path, ssh_config: Path,
                   extra: list[str] | None = None) -> list[str]:
    """The pytest command that runs tests/image against the booted guest (pure)."""
    return [
        sys.executable, "-m", "pytest", str(IMAGE_TESTS), "-p", "no:cacheprovider",
        f"--hosts=ssh://{TEST_ADMIN}@127.0.0.1:{ssh_port}", f"--ssh-config={ssh_config}",
        f"--ssh-identity-file={key}", f"--junitxml={junit}", "-ra", "--durations=15",
        *(extra or []),
    ]


def render_ssh_config(control_dir: Path) -> str:
    """ssh options for a throwaway guest: no host-key bookkeeping, bounded waits, and one
    shared connection per user (pure).

    testinfra asks for ControlMaster=auto but sets no ControlPath, so without one every
    command is a new SSH login: 2.3-2.9 s each under TCG (key exchange, PAM, logind).
    The commands of a test run one after another, so one shared connection stays within
    the hardening's MaxSessions."""
    return (
        "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n  ConnectTimeout 20\n  ServerAliveInterval 15\n"
        "  ServerAliveCountMax 3\n  IdentitiesOnly yes\n"
        f"  ControlPath {control_dir}/%C\n"
    )


def validate_image(profile: Profile, image: Path, *, accelerator: str | None = None,
                   progress: Progress | None = None, pytest_args: list[str] | None = None,
                   boot_timeout: float = 900) -> dict[str, Any]:
    """Boot `image` fresh and run the image tests; return the validation record.

    Under TCG a guest kernel can crash for the emulator's sake (seen here: an int3 trap
    while the kernel patched its own code, in about one validation out of ten). Such a
    run says nothing about the image: it is recorded under `guest_panics` and the
    image is booted once more. A panic under KVM, or a second one, fails validation."""
    progress = progress or Progress()
    choice = accel.choose_accelerator(accelerator)
    panics: list[str] = []
    while True:
        record = validate_once(profile, image, choice.name, progress, pytest_args,
                               boot_timeout)
        if record.get("guest_panic"):
            panics.append(record.pop("guest_panic"))
            if choice.name == "tcg" and len(panics) == 1:
                progress.detail(f"the guest kernel crashed under emulation ({panics[0]}); "
                                "booting the image again")
                continue
            record["status"] = "failed"
            record["failures"] = [f"guest kernel panic: {panics[-1]}", *record["failures"]]
        record["guest_panics"] = panics
        return record


def watch_tests(command: list[str], env: dict[str, str], log: Path, vm: Vm) -> int:
    """Run the tests; stop them when qemu ends under them (a guest panic ends qemu, see
    hubkiln/vm.py). Return pytest's exit status."""
    with open(log, "w", encoding="utf-8") as out:
        tests = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
        while tests.poll() is None:
            if not vm.alive():
                tests.terminate()
                try:
                    tests.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    tests.kill()
                break
            time.sleep(2)
        return tests.wait()


def validate_once(profile: Profile, image: Path, accelerator: str, progress: Progress,
                  pytest_args: list[str] | None, boot_timeout: float) -> dict[str, Any]:
    """One fresh boot of `image` and one run of the image tests."""
    logs = output_dir(profile) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubkiln-test-") as tmp:
        work = Path(tmp)
        key = work / "admin-key"
        public = seed.make_ssh_key(key, "hubkiln-validation")
        launch_file = work / "launch.yaml"
        launch_file.write_text(yaml.safe_dump(validation_launch_document(public)))
        settings = launch.load_launch(launch_file)
        folder = seed.write_seed_dir(work / "seed", launch.render_user_data(settings),
                                     launch.render_meta_data(settings))
        iso = seed.make_seed_iso(folder, work / "seed.iso")
        ssh_config = work / "ssh_config"
        (work / "ssh-control").mkdir(mode=0o700)
        ssh_config.write_text(render_ssh_config(work / "ssh-control"))
        # 8099: a port the firewall must drop (tests/image/test_hardening_firewall.py).
        ports = {22: free_port(), 80: free_port(), 443: free_port(),
                 BLOCKED_GUEST_PORT: free_port()}
        # restrict=on: the guest has no way out, as on an offline lab network; the
        # image must serve the hub with only the forwarded ports.
        spec = VmSpec(image=image, seed_iso=iso, serial_log=logs / "validate-serial.log",
                      accelerator=accelerator, forwards=ports, restrict_network=True,
                      memory_mib=validation_memory_mib(profile))
        reports = work / "reports"
        reports.mkdir()
        junit = work / "junit.xml"
        with Vm(spec) as vm:
            try:
                waited = vm.wait_for_ssh(TEST_ADMIN, key, timeout=boot_timeout)
            except BuildError:
                if (panic := vm.kernel_panic()) is None:
                    raise
                return {"status": "failed", "guest_panic": panic, "accelerator": accelerator,
                        "seconds": round(time.monotonic() - started, 1), "passed": 0,
                        "failed": 0, "skipped": 0, "failures": [], "reports": {},
                        "log": "logs/validate-serial.log"}
            progress.detail(f"SSH answered after {waited:.0f}s; running tests/image")
            env = {
                **os.environ,
                "HUBKILN_TEST_PROFILE": str(profile.path),
                "HUBKILN_TEST_LAUNCH": str(launch_file),
                "HUBKILN_TEST_HTTPS_PORT": str(ports[443]),
                "HUBKILN_TEST_HTTP_PORT": str(ports[80]),
                "HUBKILN_TEST_SSH_PORT": str(ports[22]),
                "HUBKILN_TEST_BLOCKED_PORT": str(ports[BLOCKED_GUEST_PORT]),
                "HUBKILN_TEST_KEY": str(key),
                "HUBKILN_TEST_ADMIN": TEST_ADMIN,
                "HUBKILN_TEST_STUDENTS": " ".join(TEST_STUDENTS),
                "HUBKILN_TEST_REPORTS": str(reports),
                "HUBKILN_TEST_ARTIFACTS": str(logs),
            }
            returncode = watch_tests(
                pytest_command(junit, ports[22], key, ssh_config, pytest_args), env,
                logs / "validate.log", vm)
            panic = vm.kernel_panic()
            vm.ssh(TEST_ADMIN, key, "sudo -n systemctl poweroff", check=False, timeout=30)
        summary = parse_junit(junit.read_text()) if junit.exists() else Summary(errors=1)
        found_reports = read_reports(reports)
    ok = summary.ok and returncode == 0 and panic is None
    record = {
        "status": "passed" if ok else "failed",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "accelerator": accelerator,
        "seconds": round(time.monotonic() - started, 1),
        "boot_to_ssh_seconds": round(waited, 1),
        "passed": summary.passed,
        "failed": summary.failed + summary.errors,
        "skipped": summary.skipped,
        "failures": list(summary.failures),
        "reports": found_reports,
        "log": "logs/validate.log",
    }
    if panic:
        record["guest_panic"] = panic
    return record


def record_validation(out: Path, record: dict[str, Any]) -> None:
    """Store the outcome in manifest.json; mark a failed image so nobody ships it."""
    manifest = artifacts.read_manifest(out)
    if manifest is None:
        raise BuildError(f"no manifest.json in {out}", hint="run `invoke build` first")
    manifest["validation"] = record
    artifacts.write_json(out / artifacts.MANIFEST, manifest)
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
