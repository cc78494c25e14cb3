"""Mount options of /dev/shm, /tmp and /home (HARDENING.md "mounts"); /home stays writable."""

from __future__ import annotations

import pytest

#: Proven in the VM only (the image's own mounts at boot): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("boot")

MOUNTS = {
    "/dev/shm": {"nodev", "nosuid", "noexec"},
    "/tmp": {"nodev", "nosuid"},
    "/home": {"nodev", "nosuid"},
}



@pytest.mark.parametrize("point,wanted", sorted(MOUNTS.items()))
def test_mount_has_the_options(host, hardening, journal, point, wanted):
    # The last line is the mount on top (a data disk's /home over the bind mount).
    result = host.run(f"findmnt -n -o OPTIONS --mountpoint {point} | tail -n1")
    options = set(result.stdout.strip().split(","))
    unit = {"/dev/shm": "hubkiln-shm-noexec.service", "/tmp": "tmp.mount",
            "/home": "home.mount"}[point]
    assert wanted <= options, f"{point}: {result.stdout.strip()!r}" + journal(unit)


@pytest.mark.parametrize("point", ["/tmp", "/home"])
def test_mount_is_still_writable(host, hardening, point):
    result = host.run(f"probe=$(mktemp -p {point}) && rm -f \"$probe\"")
    assert result.rc == 0, result.stderr


def test_students_servers_may_write_their_home(host, hardening):
    """SystemdSpawner's units see / read-only except the home: a unit like them writes there."""
    probe = "/home/.hubkiln-probe"
    host.run(f"install -d -o nobody {probe}")
    try:
        result = host.run(
            "systemd-run --wait --quiet --collect -p User=nobody -p ReadOnlyPaths=/ "
            f"-p ReadWritePaths={probe} -p PrivateTmp=yes touch {probe}/file")
        assert result.rc == 0, result.stderr
    finally:
        host.run(f"rm -rf {probe}")
