"""Files (HARDENING.md "files"): SUID/SGID allowlist, nothing world-writable or unowned,
cron files root-only."""

from __future__ import annotations

from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).resolve().parents[2] / "provision/files/hardening/suid-allowlist.txt"
#: Folders whose content changes at run time and belongs to services or users.
SKIP = "-path /proc -prune -o -path /sys -prune -o -path /run -prune -o -path /dev -prune -o"



def allowed_suid() -> set[str]:
    lines = ALLOWLIST.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_allowlist_lists_absolute_paths_once():
    lines = [line for line in ALLOWLIST.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all(line.startswith("/") for line in lines) and len(lines) == len(set(lines))


def test_suid_and_sgid_files_are_on_the_allowlist(host, hardening):
    with host.sudo():
        found = host.run(f"find / -xdev {SKIP} -type f -perm /6000 -print").stdout.split()
    assert set(found) - allowed_suid() == set()


def test_nothing_is_world_writable_outside_tmp_folders(host, hardening):
    with host.sudo():
        found = host.run(f"find / -xdev {SKIP} \\( -type f -perm -0002 -print \\) "
                         "-o \\( -type d -perm -0002 ! -perm -1000 -print \\)").stdout.split()
    assert found == []


def test_no_file_without_owner(host, hardening):
    with host.sudo():
        found = host.run(f"find / -xdev {SKIP} \\( -nouser -o -nogroup \\) -print").stdout
    assert found.split() == []


@pytest.mark.parametrize("path", ["/etc/crontab", "/etc/cron.d", "/etc/cron.daily",
                                  "/etc/cron.hourly", "/etc/cron.weekly", "/etc/cron.monthly"])
def test_cron_files_are_root_only(host, hardening, path):
    entry = host.file(path)
    if not entry.exists:
        pytest.skip(f"{path} does not exist in this image")
    with host.sudo():
        assert entry.user == "root" and entry.mode & 0o077 == 0, oct(entry.mode)


@pytest.mark.parametrize("package", ["telnet", "telnetd", "rsh-client", "rsh-server", "nis",
                                     "tftp", "tftpd-hpa", "xinetd", "vsftpd", "proftpd-basic"])
def test_forbidden_package_is_absent(host, hardening, package):
    assert not host.package(package).is_installed
