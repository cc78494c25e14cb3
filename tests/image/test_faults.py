"""Faults one student can cause, and hostile logins: the others and the hub carry on
(HARDENING.md, "Faults and bad input").

These tests are `disruptive`: conftest runs them after every other image test,
and each one cleans up after itself. The kill tests are in test_restarts.py and
the reboot in test_reboot.py.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest

from hubkiln.config.profile import load_profile, parse_size

pytestmark = pytest.mark.disruptive

HUB_PY = "/opt/hubkiln/hub/bin/python"
HUB_DB = "/var/lib/hubkiln/hub/jupyterhub.sqlite"
MIB = 1 << 20


@pytest.fixture(scope="module")
def other(settings, student, log_in):
    users = [u for u in settings["users"] if u != student.name]
    if not users:
        pytest.skip("needs two students on the roster")
    return log_in(users[0])


def hub_api_seconds(client, samples: int = 5) -> float:
    """Median time of GET /hub/api through the front (a public, tiny answer)."""
    times = []
    for _ in range(samples):
        started = time.monotonic()
        status, _, _ = client.request("GET", "/hub/api", timeout=30)
        times.append(time.monotonic() - started)
        assert status == 200, f"the hub answered HTTP {status}"
    return statistics.median(times)


def server_answers(session) -> bool:
    status, _, _, _ = session.client.get(f"/user/{session.name}/api/status", timeout=60)
    return status == 200


def oom_kills(host) -> int:
    return int(host.run("journalctl -k -o cat | grep -c 'Memory cgroup out of memory' "
                        "|| true").stdout.strip() or 0)  # grep -c exits 1 on zero matches


@pytest.mark.needs("limits")
def test_memory_hog_kills_only_its_own_kernel(host, settings, student, other, open_kernel,
                                              journal):
    unit = f"jupyter-{student.name}-singleuser"
    server_pid = host.run(f"systemctl show -P MainPID {unit}").stdout.strip()
    before = oom_kills(host)
    limit = parse_size(settings["limits"]["memory"])
    hog = open_kernel(student)
    try:
        # 64 MiB at a time (each written, so really used) until the limit stops it: one
        # huge request could be refused by the kernel's overcommit check instead.
        hog.send(f"chunks = []\nwhile len(chunks) < {(limit >> 26) + 8}:\n"
                 "    chunks.append(b'x' * (64 << 20))\n")
        deadline = time.monotonic() + 300
        while oom_kills(host) == before:
            assert time.monotonic() < deadline, (
                "no OOM kill within 300 s of allocating past the limit" + journal(unit))
            time.sleep(5)
    finally:
        hog.shutdown()
    assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", journal(unit)
    assert host.run(f"systemctl show -P MainPID {unit}").stdout.strip() == server_pid, (
        "the student's server itself was killed, not only the kernel")
    assert server_answers(student)
    assert server_answers(other), f"{other.name}'s server was hurt by {student.name}'s kernel"
    assert host.run("systemctl is-active jupyterhub.service").stdout.strip() == "active"


#: A classic fork bomb that ends itself: `timeout` runs it in a process group of its own
#: and, after BOMB_SECONDS, SIGKILLs that whole group (every descendant stays in it).
BOMB_SECONDS = 45
FORK_BOMB = f"""
import subprocess
subprocess.Popen(["timeout", "-s", "KILL", "{BOMB_SECONDS}", "bash", "-c", "b() {{ b | b & }}; b"])
"""


@pytest.mark.needs("limits")
def test_fork_bomb_is_contained_and_the_hub_stays_quick(host, settings, student, other,
                                                        open_kernel, hub_client):
    unit = f"jupyter-{student.name}-singleuser"
    calm = hub_api_seconds(hub_client())
    bomber = open_kernel(student)
    started = time.monotonic()
    try:
        run = bomber.execute(FORK_BOMB)
        assert run.error is None, run.error
        time.sleep(15)  # let it reach the tasks limit
        tasks = int(host.run(f"systemctl show -P TasksCurrent {unit}").stdout.strip())
        stormy = hub_api_seconds(hub_client())
        answered = server_answers(other)
    finally:
        time.sleep(max(0.0, BOMB_SECONDS + 5 - (time.monotonic() - started)))
        # Measured under TCG: the group kill of `timeout` does not end the bomb, and
        # killing its processes one pass at a time loses to the forks. Freeze the
        # unit's cgroup (nothing forks), kill the shells, thaw: the server lives on.
        host.run(f"systemctl freeze {unit}")
        host.run(f"pkill -KILL -u {student.name} -x bash")
        host.run(f"systemctl thaw {unit}")
        deadline = time.monotonic() + 300
        while host.run(f"pkill -KILL -u {student.name} -x bash").rc != 1:  # 1: none left
            assert time.monotonic() < deadline, "the fork bomb could not be stopped"
            time.sleep(2)
        bomber.shutdown()
    assert tasks > 100, f"the fork bomb did not run ({tasks} tasks in {unit})"
    assert tasks <= settings["limits"]["tasks"]
    assert stormy < max(1.0, 2 * calm), (
        f"the hub took {stormy:.2f} s to answer during the fork bomb ({calm:.2f} s calm)")
    assert answered, f"{other.name}'s server did not answer during the fork bomb"
    assert server_answers(student)


@pytest.fixture(scope="module")
def profile_disk_limit() -> int | None:
    """The profile's hub.limits.disk in bytes (None: no quota), from HUBKILN_TEST_PROFILE."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        pytest.skip("needs HUBKILN_TEST_PROFILE (the profile the image was built from)")
    limit = load_profile(path)["hub"]["limits"]["disk"]
    return parse_size(limit) if limit else None


@pytest.mark.needs("filesystem")
def test_one_student_filling_their_home_does_not_stop_the_others(
        host, student, other, open_kernel, hub_client, login_form, student_password,
        profile_disk_limit):
    """A student's kernel takes all the space it can (fallocate, halving from 1 TiB).
    With a quota (hub.limits.disk) the kernel stops it at the quota, with EDQUOT, and
    the disk keeps room; with none (null) it fills the disk (ENOSPC). Either way the
    others still log in, open JupyterLab and save, and the hub's database is intact."""
    filler = open_kernel(student)
    home = host.user(student.name).home
    free_before = int(host.run(f"df --output=avail --block-size=1 {home} | tail -n1").stdout)
    if profile_disk_limit is not None:
        assert profile_disk_limit + 256 * MIB < free_before, (
            f"the quota ({profile_disk_limit >> 20} MiB) is not below the free space of "
            f"{home}'s file system ({free_before >> 20} MiB): one student can still fill it. "
            "Give the image a bigger disk or a data disk, or lower hub.limits.disk")
    try:
        run = filler.execute(
            "import errno, os\n"
            "fd = os.open('fill.bin', os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "size, last = 1 << 40, 0\n"
            "while size >= 1 << 20:\n"
            "    try:\n"
            "        os.posix_fallocate(fd, os.fstat(fd).st_size, size)\n"
            "    except OSError as error:\n"
            "        last, size = error.errno, size // 2\n"
            "os.close(fd)\n"
            "st = os.statvfs('.')\n"
            "print(errno.errorcode.get(last, last), os.stat('fill.bin').st_blocks * 512,"
            " st.f_bavail * st.f_frsize)\n", timeout=600)
        assert run.error is None, run.error
        refused, taken, free = run.stdout.split()[-3:]
        if profile_disk_limit is None:
            assert (refused, int(free) < 256 * 4096) == ("ENOSPC", True), (
                f"the student could not fill the disk: {refused}, {int(free) >> 20} MiB free")
        else:
            assert (refused, int(taken) <= profile_disk_limit) == ("EDQUOT", True), (
                f"the quota did not stop the student: {refused} after {int(taken) >> 20} MiB "
                f"(quota {profile_disk_limit >> 20} MiB)")
            assert int(free) > 128 * MIB, f"only {int(free) >> 20} MiB left on the disk"
        saved = host.run(f"runuser -u {other.name} -- bash -c 'head -c 65536 /dev/zero > "
                         f"{host.user(other.name).home}/after-fill.bin'")
        if profile_disk_limit is not None:
            assert saved.rc == 0, f"{other.name} cannot save: {saved.stderr}"
        fresh = hub_client()
        status, _, text = login_form(fresh, other.name, student_password)
        assert status == 302, f"{other.name} cannot log in with a full home: HTTP {status}"
        # The browser's way in: the server logs the client in through the hub's OAuth.
        status, _, text, _ = fresh.get(f"/user/{other.name}/lab")
        assert status == 200, f"{other.name} cannot open JupyterLab with a full home: {text[:300]}"
        status, _, text, _ = fresh.get(f"/user/{other.name}/api/status")
        assert status == 200, f"{other.name} cannot use the hub with a full home: {text[:300]}"
        check = host.run(f"{HUB_PY} -c \"import sqlite3; print(sqlite3.connect('{HUB_DB}')"
                         ".execute('pragma integrity_check').fetchone()[0])\"")
        assert check.stdout.strip() == "ok", check.stdout + check.stderr
    finally:
        host.run(f"rm -f {home}/fill.bin {host.user(other.name).home}/after-fill.bin")
        filler.shutdown()


@pytest.mark.parametrize("name", [
    "mallory",            # not on the roster
    "root",
    "../etc",
    "student one",
    "x" * 300,
    "<script>alert(1)</script>",
])
def test_hostile_login_is_refused_and_creates_nothing(host, hub_client, admin_client,
                                                      login_form, name):
    status, _, text = login_form(hub_client(), name, "whatever-password-1")
    assert status in (400, 403), f"login as {name[:40]!r}: HTTP {status}"
    assert "<script>alert(1)</script>" not in text
    _, admin = admin_client
    api = {"X-XSRFToken": admin.cookie("_xsrf", "/hub") or ""}
    status, _, text = admin.request("GET", "/hub/api/users", headers=api)
    names = {u["name"] for u in json.loads(text)}
    assert name not in names and name.lower() not in names
    if name != "root":
        assert host.run(f"getent passwd {json.dumps(name)}").rc != 0
