"""The data disk without a guest: the uid registry's decisions, the qemu drive, the scripts.

Loads provision/files/data/hubkiln-accounts as a module (its pure functions
need nothing from the image); the shell tools are linted here because they have
no .sh suffix.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubkiln.launch import ensure_data_disk, stop_instructions
from hubkiln.provision import steps_in
from hubkiln.vm import VmSpec, create_data_disk_command, qemu_command

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT / "provision" / "files" / "data"
SHELL_TOOLS = [DATA / "hubkiln-data-disk", DATA / "hubkiln-term",
               PROJECT / "provision" / "files" / "bin" / "hubkiln-prepare-user"]


def load(name: str, path: Path):
    """Import `path` as module `name`, without __pycache__ in provision/ (it is hashed)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # dataclasses look their module up there
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


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
