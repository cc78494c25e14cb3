"""A new term: the work on the data disk outlives the image it was made on.

Term 1 is the session's e2e image (the `ci` profile, built and validated by
the `image` fixture), booted with a blank data disk; a student saves a
notebook through the hub; then the guest powers off. Term 2 is the same course
built again as another version (a new OS disk: a profile that extends
profiles/ci.yaml by its path, written into a temporary folder), booted with the
same data disk and other launch settings (another admin first, the roster in
another order): the notebook is still there, owned by the same uid, the
student's first-use password came along (a new one is refused), and the
student logs in and opens it. Term 2's OS disk is kept (an overlay, not a
snapshot), and boot 3 starts that same instance again without its data disk:
the hub must not start on the OS disk's empty /home, and the console, the
journal and the admin's next SSH login say why.

Cost under TCG: one cached build (config, disk, bake) and three boots, two with
a student server each, about 20 minutes on a quiet machine (measured: term 1
in 349 s, term 2 in 573 s). Marked `slow`: `invoke test --slow` runs it; CI's
`invoke test` does not. HUBKILN_E2E_IMAGE gives a built image of the e2e
profile instead of the session's build (tests/e2e/conftest.py).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubkiln.config import launch
from hubkiln.config.guest import settings as guest_settings
from hubkiln.config.profile import load_profile
from hubkiln.deliver import local, seed
from hubkiln.machine import nocloud
from hubkiln.machine.vm import Vm, VmSpec, create_data_disk_command, free_port
from hubkiln.paths import PROJECT_DIR, output_dir
from hubkiln.stages.pipeline import build

pytestmark = [pytest.mark.vm, pytest.mark.e2e, pytest.mark.slow]

STUDENT = "student1"
PASSWORD = "new-term-password-1"
NOTEBOOK = "term1-work.ipynb"
MARKER = "written in term 1, read in term 2"
BOOT_TIMEOUT = 900


def _image_helpers():
    """HubClient and login_and_spawn from tests/image/conftest.py (a plain import would
    clash with this folder's conftest module)."""
    path = PROJECT_DIR / "tests" / "image" / "conftest.py"
    loader = importlib.machinery.SourceFileLoader("hubkiln_image_helpers", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name,
                                                                             loader))
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


helpers = _image_helpers()


def write_profile(folder: Path, version: str) -> Path:
    path = folder / f"ci-newterm-{version}.yaml"
    path.write_text(yaml.safe_dump({
        "extends": str(PROJECT_DIR / "profiles" / "ci.yaml"),
        "name": "ci-newterm",
        "version": version,
    }))
    return path


def build_image(profile_file: Path) -> Path:
    manifest = build(str(profile_file), validate=False)
    return output_dir(load_profile(profile_file)) / manifest["files"][0]["name"]


def notebook() -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "markdown", "id": "c1", "metadata": {}, "source": MARKER}]}


class Guest:
    """A booted image: SSH as the admin's SSH account, HTTPS through the forwarded front;
    `codes`: the students' enrolment codes issued with its launch settings."""

    def __init__(self, vm: Vm, key: Path, admin: str, https_port: int,
                 codes: dict[str, str]):
        self.vm, self.key, self.admin, self.codes = vm, key, admin, codes
        self.front = helpers.Front("127.0.0.1", https_port, None)

    def sh(self, command: str) -> str:
        return self.vm.ssh(self.admin, self.key, f"sudo -n sh -c {shlex.quote(command)}").stdout

    def client(self):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
        return helpers.HubClient(self.front, context)


@dataclass
class Instance:
    """One launch of an instance: its seed (the same seed again is the same instance,
    rebooted), the admin's key and the students' enrolment codes."""

    seed_iso: Path
    key: Path
    operator: str
    codes: dict[str, str]


def launched(work: Path, admins: list[str], users: list[str]) -> Instance:
    work.mkdir()
    key = work / "admin-key"
    public = nocloud.make_ssh_key(key, "hubkiln-new-term")
    launch_file = work / "launch.yaml"
    launch_file.write_text(yaml.safe_dump({"hostname": "hubkiln-newterm", "admins": admins,
                                           "users": users, "ssh_authorized_keys": [public]}))
    settings, credentials = seed.issue_credentials(launch.load_launch(launch_file))
    iso = work / "seed.iso"
    seed.write_seed(settings, iso=iso)
    return Instance(iso, key, guest_settings().operator_name(admins[0]),
                    credentials.enrolment_codes)


def keep_os_disk(image: Path, disk: Path) -> Path:
    """A qcow2 overlay on `image`: the guest's writes outlive the boot (the image stays)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.resolve()), str(disk)], check=True)
    return disk


@contextmanager
def booted(image: Path, data_disk: Path | None, instance: Instance, serial: Path, *,
           snapshot: bool = True, hub: bool = True) -> Iterator[Guest]:
    """The instance booted from `image`; with `hub`, once its login page answers."""
    ports = {22: free_port(), 443: free_port()}
    spec = VmSpec(image=image, seed_iso=instance.seed_iso, serial_log=serial,
                  forwards=ports, data_disk=data_disk, snapshot=snapshot)
    with Vm(spec) as vm:
        vm.wait_for_ssh(instance.operator, instance.key, timeout=BOOT_TIMEOUT)
        url = local.login_url(ports[443])
        started = time.monotonic()
        while hub and not local.login_page_answers(url):
            assert time.monotonic() - started < BOOT_TIMEOUT, f"no login page at {url}"
            time.sleep(5)
        yield Guest(vm, instance.key, instance.operator, ports[443], instance.codes)
        # Cleanly, as before an OS disk swap (on a failure above, Vm just stops qemu).
        stopped = vm.power_off(instance.operator, instance.key)
    assert stopped, "the guest did not power off within 3 minutes"


def home_facts(guest: Guest) -> dict[str, str]:
    source = guest.sh("findmnt -no SOURCE --mountpoint /home | tail -n1").strip()
    return {
        "source": source,
        "options": guest.sh("findmnt -no FSTYPE,OPTIONS --mountpoint /home | tail -n1").strip(),
        "label": guest.sh(f"blkid -s LABEL -o value {source}").strip(),
        "uuid": guest.sh(f"blkid -s UUID -o value {source}").strip(),
        "journal": guest.sh("journalctl -b --no-pager -o cat -u hubkiln-data-disk.service"),
    }


def ids(guest: Guest, *names: str) -> dict[str, str]:
    return {name: guest.sh(f"id -u {name}").strip() for name in names}


@pytest.fixture(scope="module")
def term1(tmp_path_factory, image: Path) -> dict[str, Any]:
    """Term 1: the e2e image, a blank data disk, a student saves a notebook, power-off."""
    work = tmp_path_factory.mktemp("new-term")
    subprocess.run(create_data_disk_command(work / "home.qcow2", "4G"), check=True)
    instance = launched(work / "boot1", ["teacher"], [STUDENT, "student2"])
    with booted(image, work / "home.qcow2", instance, work / "boot1" / "serial.log") as guest:
        facts = home_facts(guest)
        session = helpers.login_and_spawn(guest.client(), STUDENT, PASSWORD,
                                          code=guest.codes[STUDENT])
        base = f"/user/{STUDENT}"
        session.client.get(f"{base}/lab")  # sets the server's _xsrf cookie
        status, _, text = session.client.request(
            "PUT", f"{base}/api/contents/{NOTEBOOK}",
            body=json.dumps({"type": "notebook", "format": "json",
                             "content": notebook()}).encode(),
            headers={"X-XSRFToken": session.client.cookie("_xsrf", base) or "",
                     "Content-Type": "application/json"})
        assert status in (200, 201), f"saving the notebook: HTTP {status}: {text[:300]}"
        facts["owner"] = guest.sh(f"stat -c %u:%g:%U /home/{STUDENT}/{NOTEBOOK}").strip()
        facts["ids"] = ids(guest, STUDENT, "teacher-admin")
        facts["sha256"] = guest.sh(f"sha256sum /home/{STUDENT}/{NOTEBOOK}").split()[0]
    return {**facts, "work": work}


@pytest.fixture(scope="module")
def term2(term1) -> dict[str, Any]:
    """Term 2: a rebuilt image, the same data disk, other launch settings. The OS disk
    is kept for boot 3."""
    work = term1["work"]
    image = build_image(write_profile(work, "term2"))
    os_disk = keep_os_disk(image, work / "term2-os.qcow2")
    instance = launched(work / "boot2", ["teacher2", "teacher"], ["student2", STUDENT])
    with booted(os_disk, work / "home.qcow2", instance, work / "boot2" / "serial.log",
                snapshot=False) as guest:
        facts = home_facts(guest)
        facts["ids_at_boot"] = ids(guest, STUDENT, "teacher-admin", "teacher2-admin")
        facts["owner"] = guest.sh(f"stat -c %u:%g:%U /home/{STUDENT}/{NOTEBOOK}").strip()
        # The first-use password of term 1 came along on the data disk: no one can
        # claim the name with a new password.
        facts["other_password"] = helpers.post_login(guest.client(), STUDENT,
                                                     "someone-else-9")[0]
        session = helpers.login_and_spawn(guest.client(), STUDENT, PASSWORD)
        session.client.get(f"/user/{STUDENT}/lab")  # the server's own login (OAuth) first
        facts["opened"] = session.client.request(
            "GET", f"/user/{STUDENT}/api/contents/{NOTEBOOK}?content=1")
        guest.sh("hubkiln-term archive")
        manifest = guest.sh("cat $(ls -1 /home/.hubkiln/archives/*.manifest.tsv | tail -n1)")
        facts["manifest"] = [line.split("\t") for line in manifest.splitlines()
                             if not line.startswith("#")]
    return {**facts, "os_disk": os_disk, "instance": instance}


#: Seconds the image waits for a recorded data disk (hubkiln-data-disk's WAIT_SECONDS).
DATA_DISK_WAIT = 90


@pytest.fixture(scope="module")
def term2_without_its_disk(term1, term2) -> dict[str, Any]:
    """Boot 3: term 2's instance (its OS disk, its seed) again, without the data disk."""
    serial = term1["work"] / "boot3-serial.log"
    with booted(term2["os_disk"], None, term2["instance"], serial, snapshot=False,
                hub=False) as guest:
        started = time.monotonic()
        state = ""
        # The unit waits DATA_DISK_WAIT s for the disk, then fails.
        while time.monotonic() - started < DATA_DISK_WAIT + BOOT_TIMEOUT / 3:
            state = guest.sh("systemctl is-active hubkiln-data-disk.service || :").strip()
            if state in ("failed", "active"):
                break
            time.sleep(5)
        facts = {
            "state": state,
            "hub": guest.sh("systemctl is-active jupyterhub.service || :").strip(),
            "journal": guest.sh("journalctl -b --no-pager -o cat -u hubkiln-data-disk.service"),
            "home": guest.sh("findmnt -no SOURCE --mountpoint /home || :").strip(),
            "motd": guest.vm.ssh(guest.admin, guest.key, "cat /run/motd.d/hubkiln-data-disk",
                                 check=False).stdout,
            "login_page": local.login_page_answers(local.login_url(
                guest.vm.spec.forwards[443])),
        }
    facts["console"] = serial.read_text(errors="replace")
    return facts


def test_term1_formats_the_blank_data_disk_for_home(term1):
    assert term1["label"] == "hubkiln-home", term1["journal"]
    assert term1["options"].startswith("ext4 ") and {"nodev", "nosuid"} <= set(
        term1["options"].split()[1].split(","))
    assert f"formatting {term1['source']} as ext4, label hubkiln-home" in term1["journal"]
    assert f"recorded {term1['source']} (UUID {term1['uuid']})" in term1["journal"]


def test_term2_keeps_the_data_disk_as_it_is(term1, term2):
    assert term2["uuid"] == term1["uuid"], term2["journal"]
    assert "formatting" not in term2["journal"]


def test_the_student_and_the_admin_keep_their_uids(term1, term2):
    assert term2["ids_at_boot"][STUDENT] == term1["ids"][STUDENT]  # restored before any login
    assert term2["ids_at_boot"]["teacher-admin"] == term1["ids"]["teacher-admin"]
    assert term2["ids_at_boot"]["teacher2-admin"] not in term1["ids"].values()


def test_the_notebook_is_still_the_students(term1, term2):
    assert term2["owner"] == term1["owner"]
    assert term2["owner"].endswith(f":{STUDENT}")


def test_nobody_claims_the_student_with_a_new_password(term2):
    assert term2["other_password"] != 302, "a new password was accepted for a known student"


def test_the_student_logs_in_and_opens_the_notebook(term2):
    status, _, text = term2["opened"]
    assert status == 200, f"HTTP {status}: {text[:300]}"
    model = json.loads(text)
    assert model["type"] == "notebook" and model["content"]["cells"][0]["source"] == MARKER


def test_the_term_archive_lists_the_notebook_with_its_checksum(term1, term2):
    rows = {row[3]: row for row in term2["manifest"]}
    row = rows.get(f"{STUDENT}/{NOTEBOOK}")
    assert row, f"not in the manifest: {sorted(rows)[:20]}"
    assert row[0] == STUDENT and row[2] == term1["sha256"]


def test_without_its_data_disk_the_hub_does_not_start(term2_without_its_disk):
    facts = term2_without_its_disk
    assert facts["state"] == "failed", facts["journal"]
    assert facts["hub"] != "active", facts["journal"]
    assert not facts["login_page"], "the hub served its login page on the OS disk's /home"


def test_the_missing_data_disk_is_named_on_console_journal_and_motd(term1,
                                                                    term2_without_its_disk):
    facts = term2_without_its_disk
    why = f"the data disk with UUID {term1['uuid']}"
    assert why in facts["journal"] and "is missing" in facts["journal"], facts["journal"]
    assert why in facts["console"], facts["console"][-3000:]
    assert "/home is NOT mounted and the hub is stopped" in facts["motd"], facts["motd"]
    assert "hubkiln-data-disk forget" in facts["motd"], facts["motd"]
