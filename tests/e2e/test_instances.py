"""Two instances of one image share no secret (HARDENING.md, per-instance secrets).

The session's e2e image is booted twice, one boot after the other, each on a
snapshot, with the very same launch seed (same settings, same instance id):
the first under SeaBIOS, the second under UEFI (so this also proves that the
one GPT disk boots both ways). Whatever identifies an instance or guards the
hub must differ between the two: the machine-id, the SSH host keys, the hub's
cookie secret and proxy token, and the self-signed TLS key. Secrets are
compared by their SHA-256 and never printed.

Cost under TCG: two boots to the end of hubkiln-firstboot, 4-6 minutes.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
import yaml

from hubkiln import launch, seed
from hubkiln.vm import Vm, VmSpec, free_port

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

ADMIN = "instance-admin"
FIRMWARES = ("bios", "uefi")
SECRETS = "/var/lib/hubkiln/secrets"
#: What identifies an instance: name -> command printing it (digests for secrets).
IDENTITY = {
    "machine-id": "cat /etc/machine-id",
    "ssh host keys": "cat /etc/ssh/ssh_host_*_key.pub | cut -d' ' -f1,2 | sort",
    "cookie secret": f"sha256sum < {SECRETS}/jupyterhub_cookie_secret",
    "proxy token": f"sha256sum < {SECRETS}/proxy-auth-token.env",
    "tls key": "sha256sum < /etc/hubkiln/tls/self-signed.key",
}
BOOT_TIMEOUT = 900


def write_launch_seed(folder: Path) -> tuple[Path, Path]:
    """One launch seed for both instances: (seed ISO, the admin's private key)."""
    key = folder / "admin-key"
    public = seed.make_ssh_key(key, "hubkiln-instances")
    launch_file = folder / "launch.yaml"
    launch_file.write_text(yaml.safe_dump({"hostname": "hubkiln-instance", "admins": [ADMIN],
                                           "users": ["student1"],
                                           "ssh_authorized_keys": [public]}))
    iso = folder / "seed.iso"
    launch.write_seed(launch.load_launch(launch_file), iso=iso)
    return iso, key


def read_identity(vm: Vm, key: Path) -> dict[str, str]:
    """Wait for first boot to end, then read what identifies the instance."""
    def sh(command: str) -> str:
        return vm.ssh(ADMIN, key, f"sudo -n sh -c {shlex.quote(command)}").stdout.strip()

    deadline = time.monotonic() + BOOT_TIMEOUT
    while (state := sh("systemctl is-active hubkiln-firstboot.service || true")) in (
            "activating", "inactive"):
        assert time.monotonic() < deadline, f"hubkiln-firstboot is still {state}"
        time.sleep(5)
    assert state == "active", sh("journalctl -u hubkiln-firstboot.service -o cat | tail -40")
    found = {name: sh(command) for name, command in IDENTITY.items()}
    found["os"] = sh(". /etc/os-release; echo $ID-$VERSION_ID; ls /opt/hubkiln")
    return found


@pytest.fixture(scope="module")
def instances(image, accelerator, tmp_path_factory) -> dict[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("instances")
    iso, key = write_launch_seed(folder)
    found = {}
    for firmware in FIRMWARES:
        spec = VmSpec(image=image, seed_iso=iso, serial_log=folder / f"{firmware}-serial.log",
                      accelerator=accelerator, forwards={22: free_port()}, firmware=firmware,
                      uefi_vars=folder / "vars.fd" if firmware == "uefi" else None)
        with Vm(spec) as vm:
            vm.wait_for_ssh(ADMIN, key, timeout=BOOT_TIMEOUT)
            found[firmware] = read_identity(vm, key)
            vm.ssh(ADMIN, key, "sudo -n systemctl poweroff", check=False, timeout=30)
    return found


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_the_image_boots_under_each_firmware(instances, built, firmware):
    os_line, *installed = instances[firmware]["os"].split()
    assert os_line == built["os"]["id"]
    assert {"hub", "user"} <= set(installed)


@pytest.mark.parametrize("name", IDENTITY)
def test_two_instances_share_no_secret(instances, name):
    first, second = (instances[firmware][name] for firmware in FIRMWARES)
    assert first and second, f"{name}: missing on an instance"
    assert first != second, f"{name}: the same on two instances of one image"
