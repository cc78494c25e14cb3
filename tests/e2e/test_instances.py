"""Two instances of one image share no secret (HARDENING.md, per-instance secrets).

The session's e2e image is booted twice, one boot after the other, each on a
throwaway copy, with the very same launch seed (same settings, same instance
id): once in a container (systemd-nspawn: the same disk image at native speed)
and once under qemu with UEFI (the validation's own boot is SeaBIOS's, so the one
GPT disk is proven to boot both ways). Whatever identifies an instance or guards
the hub must differ between the two: the machine-id, the SSH host keys, the hub's
cookie secret and proxy token, and the self-signed TLS key. Secrets are compared
by their SHA-256 and never printed.

Cost under TCG: one boot to the end of hubkiln-firstboot (2-3 minutes), and a
container's (seconds).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
import yaml

from hubkiln.config import launch
from hubkiln.deliver import seed
from hubkiln.machine import nocloud
from hubkiln.machine.container import Container, ContainerSpec
from hubkiln.machine.vm import Vm, VmSpec, free_port, ssh_command

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

ADMIN = "instances"
#: The admin's SSH account (hubkiln_hub.operator_name).
OPERATOR = "instances-admin"
#: Where each instance runs: a container of the image, and qemu with UEFI firmware.
MACHINES = ("container", "uefi")
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


def write_launch_seed(folder: Path) -> tuple[Path, dict[str, str], Path]:
    """One launch seed for both instances: (seed ISO, its files, the admin's private key)."""
    key = folder / "admin-key"
    public = nocloud.make_ssh_key(key, "hubkiln-instances")
    launch_file = folder / "launch.yaml"
    launch_file.write_text(yaml.safe_dump({"hostname": "hubkiln-instance", "admins": [ADMIN],
                                           "users": ["student1"],
                                           "ssh_authorized_keys": [public]}))
    settings = launch.load_launch(launch_file)
    files = {"user-data": seed.render_user_data(settings),
             "meta-data": seed.render_meta_data(settings, instance_id="hubkiln-instances-1")}
    folder_on_iso = nocloud.write_seed_dir(folder / "seed", files["user-data"], files["meta-data"])
    return nocloud.make_seed_iso(folder_on_iso, folder / "seed.iso"), files, key


def read_identity(run) -> dict[str, str]:
    """Wait for first boot to end, then read what identifies the instance; `run(argv)`
    runs an ssh command line and returns the CompletedProcess."""
    def sh(command: str) -> str:
        result = run(f"sudo -n sh -c {shlex.quote(command)}")
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    deadline = time.monotonic() + BOOT_TIMEOUT
    while (state := sh("systemctl is-active hubkiln-firstboot.service || true")) in (
            "activating", "inactive"):
        assert time.monotonic() < deadline, f"hubkiln-firstboot is still {state}"
        time.sleep(5)
    assert state == "active", sh("journalctl -u hubkiln-firstboot.service -o cat | tail -40")
    found = {name: sh(command) for name, command in IDENTITY.items()}
    found["os"] = sh(". /etc/os-release; echo $ID-$VERSION_ID; ls /opt/hubkiln")
    return found


def in_container(image: Path, files: dict[str, str], key: Path, folder: Path) -> dict[str, str]:
    spec = ContainerSpec(image=image, seed=files, work=folder / "container",
                         console_log=folder / "container-console.log",
                         machine="hubkiln-instance")
    with Container(spec) as box:
        def run(command: str):
            return box.run(ssh_command(22, OPERATOR, key, command, timeout=20), timeout=120)

        deadline = time.monotonic() + BOOT_TIMEOUT
        while run("true").returncode != 0:
            assert box.alive() and time.monotonic() < deadline, (
                "the container's SSH never answered:\n" + box.console_tail())
            time.sleep(2)
        return read_identity(run)


def in_uefi_vm(image: Path, iso: Path, key: Path, folder: Path, accelerator: str
               ) -> dict[str, str]:
    spec = VmSpec(image=image, seed_iso=iso, serial_log=folder / "uefi-serial.log",
                  accelerator=accelerator, forwards={22: free_port()}, firmware="uefi",
                  uefi_vars=folder / "vars.fd")
    with Vm(spec) as vm:
        vm.wait_for_ssh(OPERATOR, key, timeout=BOOT_TIMEOUT)
        found = read_identity(lambda command: vm.ssh(OPERATOR, key, command, check=False))
        vm.ssh(OPERATOR, key, "sudo -n systemctl poweroff", check=False, timeout=30)
    return found


@pytest.fixture(scope="module")
def instances(image, accelerator, tmp_path_factory) -> dict[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("instances")
    iso, files, key = write_launch_seed(folder)
    return {"container": in_container(image, files, key, folder),
            "uefi": in_uefi_vm(image, iso, key, folder, accelerator)}


@pytest.mark.parametrize("machine", MACHINES)
def test_the_image_boots_in_a_container_and_under_uefi(instances, built, machine):
    os_line, *installed = instances[machine]["os"].split()
    assert os_line == built["os"]["id"]
    assert {"hub", "user"} <= set(installed)


@pytest.mark.parametrize("name", IDENTITY)
def test_two_instances_share_no_secret(instances, name):
    first, second = (instances[machine][name] for machine in MACHINES)
    assert first and second, f"{name}: missing on an instance"
    assert first != second, f"{name}: the same on two instances of one image"
