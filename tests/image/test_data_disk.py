"""/home on the data disk, the uid registry and the new-term tool, inside a booted image.

The data-disk checks skip (with the reason) when the guest has no data disk:
`invoke validate` boots without one; tests/e2e/test_new_term.py boots with one.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.needs("disk")

UNIT = "hubkiln-data-disk.service"
REGISTRY = "/home/.hubkiln/accounts"
# The mount on top of /home (the hardening bind-mounts /home onto itself first).
HOME_MOUNT = "findmnt -no {columns} --mountpoint /home | tail -n1"
# Succeeds only when /home is a file system of its own, not a bind mount from /.
HOME_IS_SEPARATE = 'test "$(stat -c %d /home)" != "$(stat -c %d /)"'


@pytest.fixture(scope="module")
def data_disk(host) -> str:
    """The device /home is mounted from; skips when /home is on the OS disk."""
    with host.sudo():
        found = host.run(f"{HOME_IS_SEPARATE} && {HOME_MOUNT.format(columns='SOURCE')}")
    if found.rc != 0:
        pytest.skip("no data disk attached: /home is on the OS disk")
    return found.stdout.strip()


def registry(host) -> dict[str, tuple[int, int, str]]:
    text = host.run(f"cat {REGISTRY}").stdout if host.file(REGISTRY).exists else ""
    rows = [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]
    return {name: (int(uid), int(gid), role) for name, uid, gid, role in rows}


def test_the_data_disk_unit_succeeded(host, journal):
    assert host.service(UNIT).is_enabled
    state = host.run(f"systemctl show -P Result {UNIT}").stdout.strip()
    assert state == "success", journal(UNIT)


def test_the_hub_requires_the_data_disk_unit(host):
    assert UNIT in host.run("systemctl show -P Requires jupyterhub.service").stdout.split()
    assert "jupyterhub.service" in host.run(f"systemctl show -P Before {UNIT}").stdout.split()


def test_home_is_the_labelled_data_disk_without_devices_or_setuid(host, data_disk, journal):
    assert host.run(f"blkid -s LABEL -o value {data_disk}").stdout.strip() == "hubkiln-home"
    fstype, options = host.run(HOME_MOUNT.format(columns="FSTYPE,OPTIONS")).stdout.split()
    assert fstype == "ext4", journal(UNIT)
    assert {"nodev", "nosuid", "rw", "usrquota"} <= set(options.split(","))


def test_the_data_disk_has_a_quota_file_not_the_ext4_quota_feature(host, data_disk, journal):
    """usrquota and /home/aquota.user (made at boot by hubkiln-quota.service), never the
    ext4 quota feature: with it a kernel without quota_v2 could not mount /home
    writable. test_hostile_quota.py tries to break the limit."""
    header = host.run(f"dumpe2fs -h {data_disk}").stdout
    features = next(line for line in header.splitlines()
                    if line.startswith("Filesystem features:")).split()[2:]
    assert "quota" not in features, features
    quota_file = host.file("/home/aquota.user")
    assert quota_file.exists, "no /home/aquota.user" + journal("hubkiln-quota.service")
    assert (quota_file.user, quota_file.mode) == ("root", 0o600)


def test_the_os_disk_records_which_data_disk_holds_home(host, data_disk):
    """Without the record a missing data disk at the next boot would go unnoticed and
    students would write into the OS disk's /home."""
    record = host.file("/var/lib/hubkiln/data-disk.json")
    assert record.exists, "no /var/lib/hubkiln/data-disk.json"
    uuid = host.run(f"blkid -s UUID -o value {data_disk}").stdout.strip()
    assert json.loads(record.content_string)["uuid"] == uuid


def test_the_hub_state_folder_is_on_the_data_disk(host, data_disk):
    folder = host.file("/home/.hubkiln/hub")
    assert folder.is_directory and folder.user == "root" and folder.mode == 0o700
    assert host.run("findmnt -no SOURCE --target /home/.hubkiln/hub | tail -n1"
                    ).stdout.strip() == data_disk


def disk_of(host, device: str) -> str:
    """The whole disk a device is on (itself for a file system on a whole disk)."""
    parent = host.run(f"lsblk -no PKNAME {device}").stdout.strip()
    return parent or host.run(f"lsblk -dno KNAME {device}").stdout.strip()


def test_the_data_disk_is_not_the_root_disk(host, data_disk):
    root = host.run("findmnt -no SOURCE /").stdout.strip()
    assert disk_of(host, data_disk) != disk_of(host, root)


def test_registered_accounts_own_their_homes_with_their_registered_ids(host, student):
    accounts = registry(host)
    assert student.name in accounts, f"{student.name} is not in {REGISTRY}"
    wrong = {}
    for name, (uid, gid, _) in accounts.items():
        home = host.file(f"/home/{name}")
        if not home.exists:
            continue
        found = (host.user(name).uid if host.user(name).exists else None, home.uid, home.gid)
        if found != (uid, uid, gid):
            wrong[name] = {"registered": (uid, gid), "account uid, home uid, home gid": found}
    assert not wrong


def test_the_term_archive_matches_its_manifest(host, student):
    out = "/var/tmp/hubkiln-term-test"
    host.run(f"rm -rf {out}")
    try:
        made = host.run(f"hubkiln-term archive --output {out}")
        assert made.rc == 0, made.stderr
        check = host.run(f"cd {out} && sha256sum -c hubkiln-term-*.tar.gz.sha256")
        assert check.rc == 0, check.stdout + check.stderr
        rows = [line.split("\t") for line in host.run(f"cat {out}/*.manifest.tsv").stdout
                .splitlines() if not line.startswith("#")]
        mine = [row for row in rows if row[0] == student.name]
        files = int(host.run(f"find /home/{student.name} -xdev -type f | wc -l").stdout)
        assert len(mine) == files
        listed = host.run(f"tar -tzf {out}/*.tar.gz").stdout.splitlines()
        assert listed[0] == "MANIFEST.tsv"
        assert {row[3] for row in mine} <= set(listed)
    finally:
        host.run(f"rm -rf {out}")


#: What each password login keeps beside the homes: first-use passwords, or the hub's
#: database with the native sign-ups and approvals.
LOGIN_STATE = {"firstuse": "passwords.dbm", "native": "jupyterhub.sqlite"}


def test_passwords_and_sign_ups_live_beside_the_homes(host, settings, student):
    """They move with the data disk: after an OS disk swap no one can claim a name anew
    (firstuse) or sign up again as a student whose home was kept (native)."""
    if settings["authenticator"] not in LOGIN_STATE:
        pytest.skip(f"the {settings['authenticator']} login keeps no passwords here")
    folder = host.file("/home/.hubkiln/hub")
    assert folder.is_directory and folder.user == "root" and folder.mode == 0o700
    found = host.run("ls /home/.hubkiln/hub").stdout.split()
    wanted = LOGIN_STATE[settings["authenticator"]]
    assert any(name.startswith(wanted) for name in found), (wanted, found)
    assert not host.run("ls /var/lib/hubkiln/hub").stdout.count("passwords.dbm")
