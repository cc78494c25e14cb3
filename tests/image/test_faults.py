"""Faults one student can cause, and hostile logins: the others and the hub carry on
(HARDENING.md, "Faults and bad input").

These tests are `disruptive`: conftest runs them after every other image test,
and each one cleans up after itself. The kill tests are in test_restarts.py and
the reboot in test_reboot.py.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest

from hubkiln.profile import parse_size

pytestmark = pytest.mark.disruptive

HUB_PY = "/opt/hubkiln/hub/bin/python"
HUB_DB = "/var/lib/hubkiln/hub/jupyterhub.sqlite"


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


def test_one_full_home_does_not_stop_the_others(host, student, other, open_kernel,
                                                hub_client, login_form, student_password):
    filler = open_kernel(student)
    home = host.user(student.name).home
    try:
        run = filler.execute(
            "import os\n"
            "fd = os.open('fill.bin', os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "size = 1 << 40\n"
            "while size >= 1 << 20:\n"
            "    try:\n"
            "        os.posix_fallocate(fd, os.fstat(fd).st_size, size)\n"
            "    except OSError:\n"
            "        size //= 2\n"
            "os.close(fd)\n"
            "print(os.statvfs('.').f_bavail)\n", timeout=600)
        assert run.error is None, run.error
        assert int(run.stdout.split()[-1]) < 256, "the student could not fill the disk"
        fresh = hub_client()
        status, _, text = login_form(fresh, other.name, student_password)
        assert status == 302, f"{other.name} cannot log in with a full disk: HTTP {status}"
        # The browser's way in: the server logs the client in through the hub's OAuth.
        status, _, text, _ = fresh.get(f"/user/{other.name}/lab")
        assert status == 200, f"{other.name} cannot open JupyterLab with a full disk: {text[:300]}"
        status, _, text, _ = fresh.get(f"/user/{other.name}/api/status")
        assert status == 200, f"{other.name} cannot use the hub with a full disk: {text[:300]}"
        check = host.run(f"{HUB_PY} -c \"import sqlite3; print(sqlite3.connect('{HUB_DB}')"
                         ".execute('pragma integrity_check').fetchone()[0])\"")
        assert check.stdout.strip() == "ok", check.stdout + check.stderr
    finally:
        host.run(f"rm -f {home}/fill.bin")
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
