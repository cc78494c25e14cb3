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
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hubkiln.config.profile import Profile, parse_size
from hubkiln.deliver import local, seed
from hubkiln.errors import BuildError
from hubkiln.machine import accel, nocloud
from hubkiln.machine.container import Container, ContainerSpec
from hubkiln.machine.vm import Vm, VmSpec, free_port, ssh_command
from hubkiln.paths import IMAGE_TESTS, PROJECT_DIR, output_dir
from hubkiln.proc import Child
from hubkiln.progress import Progress
from hubkiln.validation import boottime
from hubkiln.validation.engines import (
    Summary,
    combine_records,
    parse_junit,
    plan_engines,
    read_reports,
)
from hubkiln.validation.material import (
    BLOCKED_GUEST_PORT,
    TEST_OPERATOR,
    ValidationMaterial,
    prepare_material,
)
from hubkiln.validation.variants import Variant


def validation_memory_mib(profile: Profile) -> int:
    """Guest memory for validation: one student's limit plus room for the hub and another
    student, so that a student past the limit meets the cgroup limit, not the guest's."""
    limit_mib = parse_size(profile["hub"]["limits"]["memory"]) >> 20
    return max(2048, limit_mib + 1536)


def pytest_command(junit: Path, ssh_port: int, key: Path, ssh_config: Path,
                   extra: list[str] | None = None) -> list[str]:
    """The pytest command that runs tests/image against the booted guest (pure)."""
    return [
        sys.executable, "-m", "pytest", str(IMAGE_TESTS), "-p", "no:cacheprovider",
        f"--hosts=ssh://{TEST_OPERATOR}@127.0.0.1:{ssh_port}", f"--ssh-config={ssh_config}",
        f"--ssh-identity-file={key}", f"--junitxml={junit}", "-ra", "--durations=15",
        *(extra or []),
    ]


def validate_image(profile: Profile, image: Path, *, accelerator: str | None = None,
                   progress: Progress | None = None, pytest_args: list[str] | None = None,
                   boot_timeout: float = 900, engine: str = "auto",
                   logs: Path | None = None, variant: Variant | None = None) -> dict[str, Any]:
    """Boot `image` fresh with each engine of `plan_engines` and run its share of the
    image tests; return the validation record (combine_records). With a `variant`, the
    container boots the image with the variant's hub settings and the tests expect them;
    the VM's share is then not run (it boots the artifact as it is), on the record.

    Logs and screenshots go to `logs`: by default `output/<profile>/logs/`; a build
    gives its candidate folder's, so that the current folder is left alone."""
    progress = progress or Progress()
    logs = logs or output_dir(profile) / "logs"
    choice = accel.choose_accelerator(accelerator)
    runs: dict[str, dict[str, Any]] = {}
    # A variant boots in the container, whatever the engine asked for (under KVM, `auto`
    # would mean the VM alone); the VM's share is then on the record as not run.
    plan = [*plan_engines("container", choice.name), ("vm", None)] if variant else \
        plan_engines(engine, choice.name)
    for name, marks in plan:
        if variant and name != "container":
            runs[name] = {"status": "not-run", "passed": 0, "failed": 0, "skipped": 0,
                          "failures": [], "reason": "a settings variant boots in the "
                          "container only (hubkiln/validation/variants.py)"}
            continue
        if runs and any(run["status"] != "passed" for run in runs.values()):
            # Failed already: booting another machine would only cost time.
            runs[name] = {"status": "not-run", "passed": 0, "failed": 0, "skipped": 0,
                          "failures": [], "reason": "the container's run failed first"}
            continue
        args = [*(["-m", marks] if marks else []), *(pytest_args or [])]
        if name == "container":
            progress.detail("booting the image in a container (systemd-nspawn, native speed)")
            runs[name] = validate_in_container(profile, image, progress, args, boot_timeout,
                                               logs, variant)
        else:
            runs[name] = validate_in_vm(profile, image, choice.name, progress, args,
                                        boot_timeout, logs)
    return combine_records(runs)


def validate_in_vm(profile: Profile, image: Path, accelerator: str, progress: Progress,
                   pytest_args: list[str], boot_timeout: float, logs: Path) -> dict[str, Any]:
    """The VM's share: boot under qemu and run the tests.

    Under TCG a guest kernel can crash for the emulator's sake (seen here: an int3 trap
    while the kernel patched its own code, in about one validation out of ten). Such a
    run says nothing about the image: it is recorded under `guest_panics` and the
    image is booted once more. A panic under KVM, or a second one, fails validation."""
    panics: list[str] = []
    while True:
        record = validate_once(profile, image, accelerator, progress, pytest_args,
                               boot_timeout, logs)
        if record.get("guest_panic"):
            panics.append(record.pop("guest_panic"))
            if accelerator == "tcg" and len(panics) == 1:
                progress.detail(f"the guest kernel crashed under emulation ({panics[0]}); "
                                "booting the image again")
                continue
            record["status"] = "failed"
            record["failures"] = [f"guest kernel panic: {panics[-1]}", *record["failures"]]
        record["guest_panics"] = panics
        return record


def watch_tests(command: list[str], env: dict[str, str], log: Path, machine: Any) -> int:
    """Run the tests; stop them when the machine ends under them (a guest panic ends
    qemu, see hubkiln/machine/vm.py). Return pytest's exit status. Interrupted, pytest
    gets SIGINT (it writes its report), then SIGTERM, with its ssh connections."""
    with open(log, "w", encoding="utf-8") as out, \
            Child(command, cwd=PROJECT_DIR, env=env, output=out, name="pytest",
                  stop_signals=((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0))) as tests:
        while not tests.wait(2):
            if not machine.alive():
                tests.stop(((signal.SIGTERM, 60.0),))
                break
    assert tests.returncode is not None
    return tests.returncode


def run_record(material: ValidationMaterial, returncode: int, started: float, waited: float,
               log: str, **extra: Any) -> dict[str, Any]:
    """The record of one engine's run, from its junit report."""
    junit = material.junit
    summary = parse_junit(junit.read_text()) if junit.exists() else Summary(errors=1)
    return {
        "status": "passed" if summary.ok and returncode == 0 and not extra.get(
            "guest_panic") else "failed",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **{k: v for k, v in extra.items() if v is not None},
        "seconds": round(time.monotonic() - started, 1),
        "boot_to_ssh_seconds": round(waited, 1),
        "passed": summary.passed,
        "failed": summary.failed + summary.errors,
        "skipped": summary.skipped,
        "failures": list(summary.failures),
        "reports": read_reports(material.reports),
        "log": log,
    }


def validate_once(profile: Profile, image: Path, accelerator: str, progress: Progress,
                  pytest_args: list[str] | None, boot_timeout: float,
                  logs: Path) -> dict[str, Any]:
    """One fresh boot of `image` under qemu and one run of the image tests, logging
    into `logs`."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubkiln-test-") as tmp:
        material = prepare_material(Path(tmp), profile)
        settings, key = material.settings, material.key
        folder = nocloud.write_seed_dir(material.work / "seed", seed.render_user_data(settings),
                                     seed.render_meta_data(settings))
        iso = nocloud.make_seed_iso(folder, material.work / "seed.iso")
        # 8099: a port the firewall must drop (tests/image/test_hardening_firewall.py).
        ports = {22: free_port(), 80: free_port(), 443: free_port(),
                 BLOCKED_GUEST_PORT: free_port()}
        # restrict=on: the guest has no way out, as on an offline lab network; the
        # image must serve the hub with only the forwarded ports.
        spec = VmSpec(image=image, seed_iso=iso, serial_log=logs / "validate-serial.log",
                      accelerator=accelerator, forwards=ports, restrict_network=True,
                      memory_mib=validation_memory_mib(profile))
        with Vm(spec) as vm:
            booted = time.monotonic()
            try:
                waited = vm.wait_for_ssh(TEST_OPERATOR, key, timeout=boot_timeout)
            except BuildError:
                if (panic := vm.kernel_panic()) is None:
                    raise
                return {"status": "failed", "guest_panic": panic, "accelerator": accelerator,
                        "seconds": round(time.monotonic() - started, 1), "passed": 0,
                        "failed": 0, "skipped": 0, "failures": [], "reports": {},
                        "log": "logs/validate-serial.log"}
            boot = measure_boot(vm, key, ports[443], waited, booted, boot_timeout)
            progress.detail(f"SSH answered after {waited:.0f}s, the login page after "
                            f"{boot['to_login_page_seconds']}s; running tests/image")
            env = material.env(profile, logs, ports, client_address="10.0.2.2", engine="vm")
            returncode = watch_tests(
                pytest_command(material.junit, ports[22], key, material.ssh_config,
                               pytest_args), env, logs / "validate.log", vm)
            panic = vm.kernel_panic()
            vm.ssh(TEST_OPERATOR, key, "sudo -n systemctl poweroff", check=False, timeout=30)
        return run_record(material, returncode, started, waited, "logs/validate.log",
                          accelerator=accelerator, guest_panic=panic, boot=boot)


def measure_boot(vm: Vm, key: Path, https_port: int, to_ssh: float, booted: float,
                 timeout: float) -> dict[str, Any]:
    """Seconds from qemu's start to the first login page, and where the guest's boot
    spent its time (hubkiln/validation/boottime.py). A hub that never answers is the tests' to
    report (with its journal): this only stops waiting."""
    url = local.login_url(https_port)
    to_login = None
    while time.monotonic() - booted < timeout and vm.alive():
        if local.login_page_answers(url, timeout=10):
            to_login = time.monotonic() - booted
            break
        time.sleep(1)
    outputs = {name: vm.ssh(TEST_OPERATOR, key, f"sudo -n {command} 2>&1", check=False,
                            timeout=60).stdout
               for name, command in boottime.COMMANDS.items()}
    return boottime.boot_record(outputs, to_ssh=to_ssh, to_login=to_login)


def validate_in_container(profile: Profile, image: Path, progress: Progress,
                          pytest_args: list[str], boot_timeout: float,
                          logs: Path, variant: Variant | None = None) -> dict[str, Any]:
    """The container's share: boot the image in systemd-nspawn and run the tests from
    inside its network namespace (the guest's 22, 80 and 443 on 127.0.0.1); with a
    variant, with its hub settings in place of the image's, and the tests told so."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubkiln-test-") as tmp:
        material = prepare_material(Path(tmp), variant.profile if variant else profile)
        seed_files = {"user-data": seed.render_user_data(material.settings),
                      "meta-data": seed.render_meta_data(material.settings)}
        spec = ContainerSpec(image=image, seed=seed_files, work=Path(tmp) / "container",
                             console_log=logs / "validate-container-console.log",
                             files=variant.files if variant else {})
        with Container(spec) as box:
            waited = wait_for_container_ssh(box, material.key, boot_timeout)
            progress.detail(f"SSH answered in the container after {waited:.0f}s; "
                            "running tests/image")
            ports = {22: 22, 80: 80, 443: 443}
            env = material.env(variant.profile if variant else profile, logs, ports,
                               client_address="127.0.0.1", engine="container")
            returncode = watch_tests(
                box.in_netns(pytest_command(material.junit, 22, material.key,
                                            material.ssh_config, pytest_args)),
                env, logs / "validate-container.log", box)
        return run_record(material, returncode, started, waited, "logs/validate-container.log",
                          engine="container")


def wait_for_container_ssh(box: Any, key: Path, timeout: float) -> float:
    """Seconds until the container's SSH accepts the admin key; BuildError with the
    console's end otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not box.alive():
            raise BuildError("the container stopped before SSH answered:\n"
                             + box.console_tail())
        if box.run(ssh_command(22, TEST_OPERATOR, key, "true", timeout=10), timeout=30
                   ).returncode == 0:
            return time.monotonic() - started
        time.sleep(2)
    raise BuildError(f"SSH did not answer in the container within {timeout:.0f}s:\n"
                     + box.console_tail())


