"""`invoke publish --to libvirt` for real: import, define, boot to a login prompt, remove.

Needs libvirtd (host-packages.txt lists it). Without systemd running it, the
fixture starts virtlogd and libvirtd itself; the test skips only when the
daemon cannot run at all. Set HUBKILN_PUBLISH_IMAGE to a built .qcow2 to test
that image instead of building the e2e profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hubkiln.deliver import libvirt, publish

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
BOOT_TIMEOUT = 600


def answers(uri: str = libvirt.LIBVIRT_URI) -> subprocess.CompletedProcess:
    return subprocess.run(libvirt.virsh("version", uri=uri), capture_output=True, text=True)


def start_daemons() -> None:
    """Start libvirtd the way this host can: systemd when it runs, else the daemons directly."""
    if Path("/proc/1/comm").read_text().strip() == "systemd":
        subprocess.run(["systemctl", "start", "libvirtd"], capture_output=True)
        return
    for daemon in ("virtlogd", "libvirtd"):
        running = subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode == 0
        if not running:
            subprocess.run([daemon, "-d"], capture_output=True)


@pytest.fixture(scope="module")
def libvirtd() -> str:
    missing = [t for t in ("virsh", "libvirtd") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: run ./kiln (host-packages.txt "
                    "lists libvirt-daemon-system and libvirt-clients)")
    if answers().returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("libvirtd is not running and starting it needs root")
        start_daemons()
        deadline = time.monotonic() + 20
        while answers().returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
    result = answers()
    if result.returncode != 0:
        pytest.skip(f"libvirtd cannot run here: {(result.stdout + result.stderr).strip()}")
    return libvirt.LIBVIRT_URI


@pytest.fixture(scope="module")
def artifact(request, e2e_ref):
    image = os.environ.get("HUBKILN_PUBLISH_IMAGE")
    if not image:
        request.getfixturevalue("built")
    return publish.load_artifact(e2e_ref, image)


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(libvirt.virsh(*args), capture_output=True, text=True)


def wait_for(log: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return True
        time.sleep(3)
    return False


def test_published_domain_boots_to_a_login_prompt(libvirtd, artifact, accelerator, tmp_path):
    name = f"hubkiln-e2e-{os.getpid()}"
    result = publish.publish_libvirt(artifact, name=name, accelerator=accelerator,
                                     log=tmp_path / "publish.log")
    try:
        assert result.dom_type == ("kvm" if accelerator == "kvm" else "qemu")
        assert virsh("domstate", name).stdout.strip() == "shut off"
        info = libvirt.parse_volume_xml(virsh("vol-dumpxml", "--pool", result.pool,
                                              result.volume).stdout)
        assert info["format"] == "qcow2"
        assert info["capacity"] == artifact.files["qcow2"]["virtual_bytes"]
        started = virsh("start", name)
        assert started.returncode == 0, started.stderr
        booted = wait_for(result.serial_log, "login:", BOOT_TIMEOUT)
        serial = result.serial_log.read_text(errors="replace") if result.serial_log.exists() \
            else "(no serial log)"
        assert "Linux version" in serial, serial[-3000:]
        assert booted, f"no login prompt within {BOOT_TIMEOUT}s:\n{serial[-3000:]}"
    finally:
        for cmd in libvirt.removal_commands(name, result.pool, result.volume, result.firmware):
            subprocess.run(cmd, capture_output=True)  # destroy fails when it never started
    assert virsh("dominfo", name).returncode != 0
    assert virsh("vol-info", "--pool", result.pool, result.volume).returncode != 0
