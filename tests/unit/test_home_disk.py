"""The data disk without a guest: the uid registry's decisions, the qemu drive, the scripts.

Loads provision/files/data/hubkiln-accounts as a module (its pure functions
need nothing from the image); the shell tools are linted here because they have
no .sh suffix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hubkiln.config.guest import load_module as load
from hubkiln.deliver.local import ensure_data_disk, stop_instructions
from hubkiln.machine.vm import VmSpec, create_data_disk_command, qemu_command
from hubkiln.stages.provision import steps_in

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT / "provision" / "files" / "data"
QUOTA = PROJECT / "provision" / "files" / "quota"
SHELL_TOOLS = [DATA / "hubkiln-data-disk", DATA / "hubkiln-term", DATA / "hubkiln-quota",
               QUOTA / "hubkiln-quota-modules", QUOTA / "hubkiln-quota-modules-postrm",
               PROJECT / "provision" / "files" / "bin" / "hubkiln-prepare-user"]


# hubkiln-accounts imports the settings module of the hub's venv, as in the image.
load("hubkiln_hub", PROJECT / "provision" / "files" / "hub" / "hubkiln_hub.py")
accounts = load("hubkiln_accounts", DATA / "hubkiln-accounts")
Entry = accounts.Entry


def registry(*entries: tuple[str, int, str]) -> dict:
    return {name: Entry(name, uid, uid, role) for name, uid, role in entries}


# ---- the registry file


def test_registry_round_trips_in_uid_order():
    entries = registry(("bob", 1002, "student"), ("ann", 1001, "admin"))
    text = accounts.render_registry(entries)
    assert text.splitlines()[-2:] == ["ann:1001:1001:admin", "bob:1002:1002:student"]
    assert accounts.parse_registry(text) == (entries, [])


def test_bad_and_clashing_registry_lines_are_reported_not_used():
    text = "ann:1001:1001:student\nbob:x:1:student\ncat:1001:1005:student\nann:1003:1003:admin\n"
    entries, problems = accounts.parse_registry(text)
    assert list(entries) == ["ann"]
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4"]


def test_new_ids_follow_the_highest_in_use_like_useradd():
    assert accounts.next_free_id({0, 65534, 1000, 1003}) == 1004
    assert accounts.next_free_id(set()) == 1000
    assert accounts.next_free_id({1000, 1002}, low=1000, high=1002) == 1001


# ---- plan_account: what `ensure` does


SYSTEM_GROUPS = {"root": 0, "sudo": 27, "hubkiln-students": 999}


def test_a_new_name_gets_ids_no_account_and_no_registry_entry_uses():
    plan = accounts.plan_account("cat", "student", registry(("ann", 1005, "student")),
                                 {"teacher": (1000, 1000)}, {**SYSTEM_GROUPS, "teacher": 1000})
    assert (plan.action, plan.uid, plan.gid) == ("create", 1006, 1006)
    assert plan.register == Entry("cat", 1006, 1006, "student")


def test_a_registered_name_gets_its_uid_back_whatever_order_accounts_come_in():
    """Image v2: another admin was made first and took the next free uid; the student
    whose home is on the data disk still gets the registered one."""
    known = registry(("teacher", 1000, "admin"), ("student1", 1001, "student"))
    users = {"teacher2": (1002, 1002), "teacher": (1000, 1000)}
    plan = accounts.plan_account("student1", "student", known, users,
                                 {**SYSTEM_GROUPS, "teacher": 1000, "teacher2": 1002})
    assert (plan.action, plan.uid, plan.gid, plan.register) == ("create", 1001, 1001, None)


def test_a_registered_uid_taken_by_another_account_moves_the_home_to_new_ids():
    known = registry(("student1", 1001, "student"))
    plan = accounts.plan_account("student1", "student", known, {"cloud": (1001, 1001)},
                                 {**SYSTEM_GROUPS, "cloud": 1001})
    assert (plan.action, plan.uid, plan.previous) == ("create", 1002, (1001, 1001))
    assert plan.register == Entry("student1", 1002, 1002, "student")
    assert "taken" in plan.notes[0]


def test_an_existing_account_with_other_ids_is_renumbered_when_they_are_free():
    known = registry(("teacher", 1004, "admin"))
    plan = accounts.plan_account("teacher", "admin", known, {"teacher": (1000, 1000)},
                                 {**SYSTEM_GROUPS, "teacher": 1000})
    assert (plan.action, plan.uid, plan.gid) == ("renumber", 1004, 1004)


def test_an_existing_account_is_kept_when_its_registered_ids_are_taken():
    known = registry(("teacher", 1004, "admin"))
    users = {"teacher": (1000, 1000), "other": (1004, 1004)}
    plan = accounts.plan_account("teacher", "admin", known, users,
                                 {**SYSTEM_GROUPS, "teacher": 1000, "other": 1004})
    assert plan.action == "keep" and plan.uid == 1000 and plan.notes


def test_an_unregistered_account_is_registered_unless_its_uid_is_someone_elses():
    plan = accounts.plan_account("ann", "student", {}, {"ann": (1000, 1000)}, SYSTEM_GROUPS)
    assert (plan.action, plan.register) == ("none", Entry("ann", 1000, 1000, "student"))
    clash = accounts.plan_account("ann", "student", registry(("bob", 1000, "student")),
                                  {"ann": (1000, 1000)}, SYSTEM_GROUPS)
    assert clash.action == "keep" and clash.register is None and "bob" in clash.notes[0]


def test_a_consistent_account_changes_nothing_but_its_role():
    known = registry(("ann", 1001, "student"))
    same = accounts.plan_account("ann", "student", known, {"ann": (1001, 1001)}, SYSTEM_GROUPS)
    assert (same.action, same.register) == ("none", None)
    promoted = accounts.plan_account("ann", "admin", known, {"ann": (1001, 1001)}, SYSTEM_GROUPS)
    assert promoted.register == Entry("ann", 1001, 1001, "admin")


# ---- the local VM's data disk


def test_the_data_disk_is_attached_read_write_never_on_a_snapshot():
    spec = VmSpec(image=Path("/i.qcow2"), seed_iso=Path("/s.iso"), serial_log=Path("/l"),
                  data_disk=Path("/d.qcow2"))
    cmd = qemu_command(spec)
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    data = next(d for d in drives if d.startswith("file=/d.qcow2,"))
    assert "snapshot" not in data and "readonly" not in data and "format=qcow2" in data
    assert "if=virtio" in data  # a -device would be placed before the OS disk: no boot
    assert drives.index(data) == 1  # after the OS disk, before the seed


def test_no_data_disk_means_no_extra_drive():
    spec = VmSpec(image=Path("/i.qcow2"), seed_iso=None, serial_log=Path("/l"))
    assert sum(a == "-drive" for a in qemu_command(spec)) == 1


def test_create_data_disk_command():
    assert create_data_disk_command(Path("/d.qcow2"), "10G") == [
        "qemu-img", "create", "-q", "-f", "qcow2", "/d.qcow2", "10G"]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_a_missing_data_disk_is_made_blank_and_an_existing_one_kept(tmp_path):
    disk = tmp_path / "home.qcow2"
    assert "made a blank" in ensure_data_disk(disk, size="64M")
    before = disk.read_bytes()
    assert "kept as it is" in ensure_data_disk(disk, size="64M")
    assert disk.read_bytes() == before


def test_stopping_says_what_the_data_disk_keeps():
    assert "nothing it changes is kept" in stop_instructions(None)[0]
    assert "/home stays on" in stop_instructions(Path("/x/home.qcow2"))[0]


# ---- the image side


def test_the_data_disk_step_is_in_the_config_layer_after_the_hub():
    names = [s.script for s in steps_in("config")]
    assert names.index("75-data-disk.sh") > names.index("50-hub-config.sh")


def test_the_unit_runs_before_accounts_logins_and_the_hub():
    unit = (DATA / "hubkiln-data-disk.service").read_text()
    before = " ".join(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("Before="))
    for other in ("cloud-init.service", "systemd-user-sessions.service",
                  "hubkiln-firstboot.service", "jupyterhub.service", "sysinit.target"):
        assert other in before.split()
    assert "RequiredBy=jupyterhub.service" in unit
    assert "DefaultDependencies=no" in unit


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SHELL_TOOLS, ids=lambda p: p.name)
def test_shell_tools_are_shellcheck_clean_and_fail_fast(script):
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "set -euo pipefail" in script.read_text().splitlines()[:40]


def test_the_term_tool_escapes_manifest_paths(tmp_path):
    """`escape` from hubkiln-term, run by bash: backslash, tab and newline."""
    script = DATA / "hubkiln-term"
    source = script.read_text()
    start = source.index("escape() {")
    function = source[start:source.index("\n}\n", start) + 3]
    result = subprocess.run(["bash", "-c", function + "escape $'a\\\\b\\tc\\nd'"],
                            capture_output=True, text=True, check=True)
    assert result.stdout == "a\\\\b\\tc\\nd"


# ---- hubkiln-data-disk: which disk, and never a silent fallback


DATA_DISK = DATA / "hubkiln-data-disk"
MIB = 1 << 20
RECORDED = "0a1b2c3d-1111-2222-3333-444455556666"
OTHER = "99999999-1111-2222-3333-444455556666"


def data_disk(call: str) -> subprocess.CompletedProcess:
    """Run `call` in bash with hubkiln-data-disk's functions (sourced: its main part is skipped)."""
    return subprocess.run(["bash", "-c", f'source "$1"; {call}', "bash", str(DATA_DISK)],
                          capture_output=True, text=True)


def decide(recorded="", timed_out="no", labelled="", damaged="", new="", requested="") -> str:
    result = data_disk(" ".join(["decide", *(f"'{a}'" for a in (
        recorded, timed_out, labelled, damaged, new, requested))]))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_first_boot_formats_the_one_new_disk_or_uses_the_labelled_one():
    assert decide(new="/dev/vdb") == "format /dev/vdb"
    assert decide(labelled=f"/dev/vdb={OTHER}", new="/dev/vdc") == "use /dev/vdb"
    assert decide() == "none"


def test_the_recorded_disk_is_used_when_it_is_there():
    assert decide(RECORDED, labelled=f"/dev/vdc={RECORDED}") == "use /dev/vdc"


def test_a_missing_recorded_disk_is_waited_for_then_fails_never_falls_back():
    assert decide(RECORDED) == "wait"
    failed = decide(RECORDED, "yes")
    assert failed.startswith("fail ") and RECORDED in failed
    assert "hubkiln-data-disk forget" in failed and "attach it" in failed
    # nor is a new disk formatted in its place, nor a format request followed
    assert decide(RECORDED, "yes", new="/dev/vdb").startswith("fail ")
    assert decide(RECORDED, "yes", requested="/dev/vdb").startswith("fail ")


def test_another_hubkiln_home_disk_than_the_recorded_one_is_refused():
    assert decide(RECORDED, labelled=f"/dev/vdb={OTHER}") == "wait"  # the right one may come
    failed = decide(RECORDED, "yes", labelled=f"/dev/vdb={OTHER}")
    assert failed.startswith("fail ") and OTHER in failed and RECORDED in failed


def test_a_damaged_hubkiln_home_is_repaired_never_formatted():
    assert decide(damaged="/dev/vdb", new="/dev/vdc") == "repair /dev/vdb"
    assert decide(RECORDED, damaged="/dev/vdb") == "repair /dev/vdb"
    assert decide(damaged="/dev/vdb /dev/vdc").startswith("fail ")


def test_two_candidates_are_an_error_and_a_request_picks_one():
    assert decide(labelled=f"/dev/vdb={RECORDED} /dev/vdc={OTHER}").startswith("fail ")
    assert decide(new="/dev/vdb /dev/vdc").startswith("fail ")
    assert decide(new="/dev/vdb /dev/vdc", requested="/dev/vdc") == "requested /dev/vdc"
    assert decide(labelled=f"/dev/vdb={OTHER}", requested="/dev/vdc") == "use /dev/vdb"


def sparse(path: Path, size: int = 300 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def is_new(path: Path) -> bool:
    return data_disk(f"is_new '{path}'").returncode == 0


def test_only_an_all_zero_disk_is_new(tmp_path):
    assert is_new(sparse(tmp_path / "blank.img"))
    tail = sparse(tmp_path / "tail.img")
    with open(tail, "r+b") as f:
        f.seek(300 * MIB - 10)
        f.write(b"x")  # e.g. an md 1.0 superblock or a backup GPT at the end
    assert not is_new(tail)


needs_mkfs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("blkid") is None,
                                reason="e2fsprogs or util-linux is not installed")


def wiped_home(tmp_path: Path, block_size: int, start: int, length: int) -> Path:
    """A hubkiln-home ext4 whose bytes [start, start + length) were zeroed."""
    disk = sparse(tmp_path / f"home-{block_size}.img", 600 * MIB)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-b", str(block_size), "-L", "hubkiln-home",
                    str(disk)], check=True, capture_output=True)
    with open(disk, "r+b") as f:
        f.seek(start)
        f.write(bytes(length))
    return disk


@needs_mkfs
@pytest.mark.parametrize(("block_size", "start", "length"), [
    (4096, 1024, 1024),   # the primary superblock only
    (1024, 0, MIB),       # the whole first MiB (a zeroed partition table area)
], ids=["primary-superblock", "first-mib"])
def test_a_hubkiln_home_without_its_primary_superblock_is_found_by_its_backup(
        tmp_path, block_size, start, length):
    """The attack: wipefs and blkid see nothing on such a disk, so 'blank' alone would
    have formatted the students' homes."""
    disk = wiped_home(tmp_path, block_size, start, length)
    assert subprocess.run(["blkid", "-p", str(disk)], capture_output=True).returncode == 2
    assert not is_new(disk)
    found = data_disk(f"backup_superblock '{disk}'; hex_label hubkiln-home")
    backup, wanted = found.stdout.splitlines()
    block, size, label = backup.split()
    assert (int(size), label) == (block_size, wanted)
    assert int(block) == 8 * block_size + (block_size == 1024)


@needs_mkfs
def test_e2fsck_from_the_backup_gives_the_label_back(tmp_path):
    disk = wiped_home(tmp_path, 4096, 1024, 1024)
    block, size, _ = data_disk(f"backup_superblock '{disk}'").stdout.split()
    fixed = subprocess.run(["e2fsck", "-p", "-b", block, "-B", size, str(disk)],
                           capture_output=True, text=True)
    assert fixed.returncode < 4, fixed.stdout + fixed.stderr
    label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(disk)],
                           capture_output=True, text=True).stdout.strip()
    assert label == "hubkiln-home"


# ---- hubkiln-prepare-user: the quota


PREPARE_USER = PROJECT / "provision" / "files" / "bin" / "hubkiln-prepare-user"


def quota_inodes(kib: int) -> int:
    source = PREPARE_USER.read_text()
    start = source.index("quota_inodes() {")
    function = source[start:source.index("\n}\n", start) + 3]
    return int(subprocess.run(["bash", "-c", f"{function}quota_inodes {kib}"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize(("kib", "inodes"), [(2 << 20, 131072), (64 << 10, 8192),
                                             (1 << 30, 1 << 26), (16, 8192)])
def test_the_quota_allows_one_file_per_16_kib(kib, inodes):
    assert quota_inodes(kib) == inodes  # as mke2fs makes inodes; at least 8192


def boot_without_disks(tmp_path: Path, record: str | None) -> subprocess.CompletedProcess:
    """hubkiln-data-disk's boot run on a machine with no disk but the OS disk (the
    system parts are stubbed: no disk is probed, nothing is mounted or made)."""
    if record is not None:
        (tmp_path / "data-disk.json").write_text(record)
    stubs = ("settle() { :; }; home_is_separate() { return 1; }; labelled_devices() { :; }; "
             "candidate_disks() { :; }; ensure_hub_state() { :; }; restore_accounts() { :; }; "
             f"RECORD='{tmp_path}/data-disk.json' MOTD='{tmp_path}/motd' WAIT_SECONDS=2 "
             "MODE=boot; sleep() { command sleep 0.2; }; boot")
    return data_disk(stubs)


def test_boot_without_the_recorded_disk_waits_then_fails_and_says_what_to_do(tmp_path):
    result = boot_without_disks(tmp_path, f'{{"uuid": "{RECORDED}", "label": "hubkiln-home"}}\n')
    assert result.returncode == 1, result.stdout + result.stderr
    assert "waiting up to 2 s" in result.stdout
    assert f"UUID {RECORDED}" in result.stderr and "hubkiln-data-disk forget" in result.stderr
    motd = (tmp_path / "motd").read_text()  # the next SSH login sees it too
    assert "NOT mounted" in motd and "forget" in motd


def test_boot_without_a_record_and_without_disks_keeps_home_on_the_os_disk(tmp_path):
    result = boot_without_disks(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert "no data disk: /home stays on the OS disk" in result.stdout


def test_an_unreadable_record_stops_the_boot(tmp_path):
    result = boot_without_disks(tmp_path, "{}\n")
    assert result.returncode == 1 and "forget" in result.stderr


def test_forget_drops_the_record_so_the_next_boot_goes_on_without_the_disk(tmp_path):
    record = tmp_path / "data-disk.json"
    record.write_text(f'{{"uuid": "{RECORDED}"}}\n')
    result = data_disk(f"home_is_separate() {{ return 1; }}; RECORD='{record}' "
                       f"MOTD='{tmp_path}/motd'; forget")
    assert result.returncode == 0, result.stderr
    assert not record.exists() and RECORDED in result.stdout
    assert boot_without_disks(tmp_path, None).returncode == 0


# ---- quotas: never the ext4 quota feature, on at boot, off loudly


def test_a_new_data_disk_gets_no_ext4_quota_feature(tmp_path):
    """With the feature a kernel without quota_v2 could not mount /home writable."""
    if shutil.which("mkfs.ext4") is None or shutil.which("dumpe2fs") is None:
        pytest.skip("e2fsprogs is not installed")
    disk = sparse(tmp_path / "new.img")
    made = data_disk(f"copy_os_home() {{ :; }}; make_filesystem '{disk}'")
    assert made.returncode == 0, made.stdout + made.stderr
    header = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True).stdout
    assert "hubkiln-home" in header
    assert "quota" not in features(header) and "User quota inode:" not in header


def features(dumpe2fs_header: str) -> list[str]:
    return next(line for line in dumpe2fs_header.splitlines()
                if line.startswith("Filesystem features:")).split()[2:]


def test_a_data_disk_with_the_quota_feature_loses_it_before_the_usrquota_mount(tmp_path):
    if shutil.which("mkfs.ext4") is None or shutil.which("tune2fs") is None:
        pytest.skip("e2fsprogs is not installed")
    disk = sparse(tmp_path / "old.img")
    subprocess.run(["mkfs.ext4", "-F", "-q", "-L", "hubkiln-home", "-O", "quota",
                    "-E", "quotatype=usrquota", str(disk)], check=True, capture_output=True)
    stubs = (f"mount() {{ echo \"mount $*\" >>'{tmp_path}/calls'; }}; record() {{ :; }}; "
             "ensure_hub_state() { :; }; restore_accounts() { :; }; "
             f"MOTD='{tmp_path}/motd'; mount_home '{disk}'")
    result = data_disk(stubs)
    assert result.returncode == 0, result.stdout + result.stderr
    header = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True).stdout
    assert "quota" not in features(header)
    (call,) = (tmp_path / "calls").read_text().splitlines()
    options = call.split()[call.split().index("-o") + 1].split(",")
    assert {"nodev", "nosuid", "usrquota"} <= set(options)


QUOTA_TOOL = DATA / "hubkiln-quota"


def quota_boot(tmp_path: Path, stubs: str) -> subprocess.CompletedProcess:
    """hubkiln-quota's start with the system parts stubbed (`stubs` may override more)."""
    base = (f"MOTD='{tmp_path}/motd.d/hubkiln-quota'; uname() {{ echo 6.8.0-49-generic; }}; "
            "quota_filesystems() { echo '/ ext4'; echo '/home ext4'; }; "
            "quota_is_on() { return 1; }; "
            f"count() {{ echo \"count $1\" >>'{tmp_path}/calls'; }}; "
            f"quotaon() {{ echo \"quotaon $*\" >>'{tmp_path}/calls'; }}; ")
    return subprocess.run(["bash", "-c", f'source "$1"; {base}{stubs}; start', "bash",
                           str(QUOTA_TOOL)], capture_output=True, text=True)


def test_without_the_quota_module_the_boot_goes_on_and_says_quotas_are_off(tmp_path):
    """The safe failure mode: exit 0 (the hub starts), one line for the console and the
    journal, and the message at the next SSH login; the quota files are still made."""
    result = quota_boot(tmp_path, "has_quota_format() { return 1; }")
    assert result.returncode == 0, result.stderr
    wanted = ("disk quotas are OFF: the running kernel has no quota_v2 module; "
              "students' disk limits are not enforced")
    (line,) = result.stderr.splitlines()
    assert wanted in line and "6.8.0-49-generic" in line and "hubkiln-quota-modules" in line
    motd = (tmp_path / "motd.d/hubkiln-quota").read_text()
    assert wanted in motd and "systemctl restart hubkiln-quota" in motd
    assert (tmp_path / "calls").read_text().split("\n")[:2] == ["count /", "count /home"]
    assert "quotaon" not in (tmp_path / "calls").read_text()


def test_with_the_module_each_file_system_is_counted_then_turned_on(tmp_path):
    (tmp_path / "motd.d").mkdir()
    (tmp_path / "motd.d/hubkiln-quota").write_text("stale\n")  # from a boot without the module
    result = quota_boot(tmp_path, "has_quota_format() { return 0; }")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "count /", "count /home", "quotaon -u -- /", "quotaon -u -- /home"]
    assert not (tmp_path / "motd.d/hubkiln-quota").exists()
    assert "user quotas are on: / /home" in result.stdout


def test_a_failing_quotaon_fails_the_unit_and_says_so(tmp_path):
    result = quota_boot(tmp_path, "has_quota_format() { return 0; }; quotaon() { return 1; }")
    assert result.returncode == 1
    assert "OFF" in (tmp_path / "motd.d/hubkiln-quota").read_text()


def test_quotas_already_on_are_not_counted_again(tmp_path):
    """quotacheck refuses a file system whose quotas are on (an admin's restart)."""
    result = quota_boot(tmp_path, "has_quota_format() { return 0; }; quota_is_on() { return 0; }")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize(("devices", "options", "expected"), [
    ("1 1", "rw,usrquota", ["/ ext4"]),                      # /home is a bind mount of /
    ("1 2", "rw,nodev,usrquota", ["/ ext4", "/home ext4"]),  # a data disk
    ("1 1", "rw,relatime", []),                              # not marked for quotas
], ids=["bind", "data-disk", "no-usrquota"])
def test_the_file_systems_of_root_and_home_are_taken_once_each(devices, options, expected):
    root_dev, home_dev = devices.split()
    stubs = (f"stat() {{ case ${{@: -1}} in /) echo {root_dev};; /home) echo {home_dev};; "
             "esac; }; "
             f"findmnt() {{ echo \"${{@: -1}} ext4 {options}\"; }}; quota_filesystems")
    result = subprocess.run(["bash", "-c", f'source "$1"; {stubs}', "bash", str(QUOTA_TOOL)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = [line for line in result.stdout.splitlines() if not line.startswith("hubkiln")]
    assert found == expected


def test_the_quota_unit_is_wanted_by_the_hub_never_required():
    unit = (DATA / "hubkiln-quota.service").read_text()
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).extend(value.split())
    assert {"local-fs.target", "hubkiln-data-disk.service"} <= set(keys["After"])
    assert "jupyterhub.service" in keys["Before"]
    assert "jupyterhub.service" in keys["WantedBy"]
    assert not {"RequiredBy", "Requires", "BindsTo", "RequisiteOf"} & set(keys)


def test_the_quota_packages_own_units_are_masked():
    """quotaon.service would run quotaon -aug before the quota files exist (and fail the
    boot's unit list on a kernel without quota_v2)."""
    script = (PROJECT / "provision" / "75-data-disk.sh").read_text()
    masked = script[script.index('QUOTA_MASKED="'):].split('"')[1].split()
    assert {"quota.service", "quotaon.service", "systemd-quotacheck.service",
            "quotaon@.service", "systemd-quotacheck@.service", "quotarpc.service"} <= set(masked)
    assert "systemctl mask $QUOTA_MASKED" in script


def test_the_kernel_quota_step_runs_after_the_packages():
    names = [s.script for s in steps_in("envs")]
    assert names.index("15-kernel-quota.sh") == names.index("10-apt-packages.sh") + 1


# ---- the kernel hook: the quota modules for each kernel, never a broken upgrade


HOOK = QUOTA / "hubkiln-quota-modules"
KERNEL = "6.8.0-49-generic"
needs_dpkg_deb = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("tar") is None,
                                    reason="dpkg-deb or tar is not installed")


def fake_kernel_tools(tmp_path: Path, vermagic: str = KERNEL) -> dict[str, str]:
    """A linux-modules-extra package for KERNEL, and apt-get, modinfo and depmod that
    stand in for the real ones (modinfo reads a module's vermagic: its text here)."""
    pkg = tmp_path / "pkg"
    quota = pkg / f"lib/modules/{KERNEL}/kernel/fs/quota"
    quota.mkdir(parents=True)
    for name in ("quota_v2.ko.zst", "quota_tree.ko.zst", "quota_v1.ko.zst"):
        (quota / name).write_text(f"{vermagic} SMP preempt mod_unload modversions\n")
    (pkg / f"lib/modules/{KERNEL}/kernel/drivers").mkdir()
    (pkg / f"lib/modules/{KERNEL}/kernel/drivers/big.ko.zst").write_text("x")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        f"Package: linux-modules-extra-{KERNEL}\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@example.org>\nDescription: test\n")
    deb = tmp_path / f"linux-modules-extra-{KERNEL}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(pkg), str(deb)], check=True,
                   capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "apt-get": f'[[ "$*" == "-q download linux-modules-extra-{KERNEL}" ]] || '
                   f'{{ echo "E: Unable to locate package $3" >&2; exit 100; }}; cp {deb} .',
        "modinfo": '[[ "$1 $2" == "-F vermagic" ]] && cat "$3"',
        "depmod": f'echo "depmod $*" >>{tmp_path}/depmod.log',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    root = tmp_path / "root"
    (root / f"lib/modules/{KERNEL}/kernel/fs/ext4").mkdir(parents=True)  # no fs/quota
    return {"PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin", "HUBKILN_QUOTA_ROOT": str(root)}


def hook(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(HOOK), *args], capture_output=True, text=True, env=env)


@needs_dpkg_deb
def test_the_hook_takes_only_the_two_quota_modules_from_the_extra_package(tmp_path):
    env = fake_kernel_tools(tmp_path)
    assert hook(env, "--check", KERNEL).returncode == 1
    result = hook(env, KERNEL, f"/boot/vmlinuz-{KERNEL}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    modules = Path(env["HUBKILN_QUOTA_ROOT"]) / "lib/modules" / KERNEL
    assert sorted(p.name for p in (modules / "updates/hubkiln-quota").iterdir()) == [
        "quota_tree.ko.zst", "quota_v2.ko.zst"]
    assert not list(modules.rglob("big.ko*")) and not list(modules.rglob("quota_v1.ko*"))
    assert (tmp_path / "depmod.log").read_text().split() == [
        "depmod", "-b", env["HUBKILN_QUOTA_ROOT"], KERNEL]
    assert hook(env, "--check", KERNEL).returncode == 0
    again = hook(env, KERNEL)  # the next upgrade, or an admin's rerun
    assert again.returncode == 0 and "nothing to do" in again.stdout


@needs_dpkg_deb
@pytest.mark.parametrize("problem", ["no-package", "wrong-kernel"])
def test_a_failing_hook_warns_and_never_breaks_the_upgrade(tmp_path, problem):
    env = fake_kernel_tools(tmp_path, vermagic="6.8.0-48-generic" if problem == "wrong-kernel"
                            else KERNEL)
    version = "6.8.0-50-generic" if problem == "no-package" else KERNEL
    (Path(env["HUBKILN_QUOTA_ROOT"]) / "lib/modules" / version).mkdir(parents=True, exist_ok=True)
    result = hook(env, version)
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "quotas OFF" in result.stderr
    assert not list(Path(env["HUBKILN_QUOTA_ROOT"]).rglob("hubkiln-quota"))
    assert hook(env, "--check", version).returncode == 1  # so the build step fails on it


def test_a_kernel_with_the_modules_needs_nothing(tmp_path):
    """Debian's kernels: quota_v2 as a file; a kernel may also build it in."""
    modules = tmp_path / "lib/modules"
    (modules / "6.1.0-57-cloud-amd64/kernel/fs/quota").mkdir(parents=True)
    for name in ("quota_v2.ko", "quota_tree.ko"):
        (modules / "6.1.0-57-cloud-amd64/kernel/fs/quota" / name).touch()
    (modules / "6.9.0-custom").mkdir()
    (modules / "6.9.0-custom/modules.builtin").write_text(
        "kernel/fs/quota/quota_tree.ko\nkernel/fs/quota/quota_v2.ko\n")
    env = {"PATH": "/usr/bin:/bin", "HUBKILN_QUOTA_ROOT": str(tmp_path)}
    for version in ("6.1.0-57-cloud-amd64", "6.9.0-custom"):
        assert hook(env, "--check", version).returncode == 0
        result = hook(env, version)
        assert result.returncode == 0 and "nothing to do" in result.stdout, result.stderr


# ---- hubkiln-prepare-user: quotas that are off are reported, not hidden


@pytest.mark.parametrize(("state", "on"), [
    ("user quota on / (/dev/vda1) is on", True),
    ("user quota on / (/dev/vda1) is off", False),
    ("user quota on / (/dev/vda1) is on\\nuser quota on /home (/dev/vdb) is off", False),
    ("quotaon: Cannot find mountpoint for device /dev/vdb", False),
])
def test_prepare_user_tells_quotas_that_are_off(state, on):
    source = PREPARE_USER.read_text()
    start = source.index("quotas_on() {")
    function = source[start:source.index("\n}\n", start) + 3]
    stub = f"quotaon() {{ printf '{state}\\n'; }}\n"
    result = subprocess.run(["bash", "-c", f"{stub}{function}quotas_on /dev/vda1 /dev/vdb"],
                            capture_output=True, text=True)
    assert (result.returncode == 0) == on, result.stderr


# ---- what hubkiln-accounts may make or change


def test_system_users_and_groups_are_never_taken_over():
    users = {"ubuntu": (1000, 1000), "alice": (1001, 1001)}
    groups = {"adm": 4, "sudo": 27, "ubuntu": 1000, "alice": 1001, "lxd": 101}
    problem = accounts.foreign_name_problem
    # Reserved names (the shared rule), whatever the system has.
    assert "reserved" in problem("adm", {}, users, groups, set())
    assert "reserved" in problem("sudo", {}, {}, {}, set())
    # A group hubkiln did not make: refused, never renumbered to a hub gid.
    assert "group 'staff2' already exists" in problem("staff2", {}, users,
                                                      {**groups, "staff2": 50}, set())
    # An account hubkiln did not make (a cloud's user, added by hand): refused.
    assert "did not make" in problem("bob", {}, {**users, "bob": (1002, 1002)},
                                     {**groups, "bob": 1002}, set())
    # Hub accounts (registered, or members of the hub groups from older images): fine.
    assert problem("alice", {}, users, groups, {"alice"}) is None
    assert problem("alice", registry(("alice", 1001, "student")), users, groups, set()) is None
    assert problem("carol", {}, users, groups, set()) is None  # new: made by hubkiln
    # A registered name whose group is a system group now: not renumbered.
    assert "system group" in problem("dave", registry(("dave", 1005, "student")), users,
                                     {**groups, "dave": 60}, set())
