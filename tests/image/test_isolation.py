"""Students are isolated: one student cannot reach another's server, files or processes,
and the admin sees every student (hub API, as the admin panel does)."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture(scope="module")
def other(settings, student, log_in):
    """The second roster student, logged in with a running server of their own."""
    users = list(settings["users"])
    if len(users) < 2:
        pytest.skip("needs two students on the roster")
    return log_in(next(u for u in users if u != student.name))


@pytest.fixture(scope="module")
def other_kernel(other, open_kernel):
    started = open_kernel(other)
    yield started
    started.shutdown()


def test_other_student_cannot_use_the_first_students_server(student, other):
    own, _, _, _ = other.client.get(f"/user/{other.name}/api/status")
    assert own == 200, "the second student cannot reach their own server"
    status, _, text, path = other.client.get(f"/user/{student.name}/api/status")
    assert status != 200 or '"started"' not in text, (
        f"{other.name} reached {student.name}'s server at {path}")
    status, _, _ = other.client.request("GET", f"/user/{student.name}/api/contents")
    assert status in (302, 403, 404), f"{other.name} got HTTP {status} from {student.name}'s files"


def test_other_student_cannot_read_the_first_students_files(host, student, other_kernel):
    home = host.user(student.name).home
    host.run(f"install -o {student.name} -m 0600 /dev/null {home}/private.txt")
    run = other_kernel.execute(
        "import os\n"
        f"for path in ({home!r}, {home + '/private.txt'!r}):\n"
        "    try:\n"
        "        found = os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
        "        print(path, 'READABLE', found)\n"
        "    except PermissionError:\n"
        "        print(path, 'denied')\n")
    assert run.error is None, run.error
    assert "READABLE" not in run.stdout, run.stdout
    assert run.stdout.count("denied") == 2, run.stdout


def test_other_student_cannot_see_the_first_students_processes(host, student, other,
                                                               other_kernel):
    uid = host.user(student.name).uid
    assert host.run(f"pgrep -u {uid}").rc == 0, f"{student.name} has no running process"
    run = other_kernel.execute(
        "import os\n"
        "owners = {os.stat(f'/proc/{p}').st_uid for p in os.listdir('/proc') if p.isdigit()}\n"
        "print(sorted(owners))\n")
    assert run.error is None, run.error
    owners = json.loads(run.stdout)
    assert uid not in owners, f"{other.name} sees processes of {student.name}: {owners}"


def test_the_first_students_kernel_listens_on_no_port_another_student_can_reach(
        host, student, kernel, other_kernel):
    """A kernel speaks to its server over Unix sockets in the server's private /tmp:
    on TCP (jupyter's default) its five channels listen on 127.0.0.1, open to every
    local user, who can then try its key, or take a port before the kernel binds it
    (at class start that killed kernels). What a student may still listen on: their
    server's one port, and per kernel ipykernel's own pipe for the output of forked
    processes (bound by the kernel itself, and each message must carry a random
    secret of the kernel's). The other student sees the listeners in /proc/net/tcp."""
    uid = host.user(student.name).uid
    assert kernel.execute("print(1 + 1)").stdout.strip() == "2", "the kernel does not run"
    seen = other_kernel.execute(
        "found = 0\n"
        "for table in ('/proc/net/tcp', '/proc/net/tcp6'):\n"
        "    for line in open(table).read().splitlines()[1:]:\n"
        "        f = line.split()\n"
        f"        found += f[3] == '0A' and int(f[7]) == {uid}\n"
        "print(found)\n")
    assert seen.error is None, seen.error
    listeners = host.run("ss -Hltnp").stdout
    per_process: dict[int, int] = {}
    for pid in map(int, re.findall(r"pid=(\d+)", listeners)):
        if host.file(f"/proc/{pid}").exists and host.run(
                f"stat -c %u /proc/{pid}").stdout.strip() == str(uid):
            per_process[pid] = per_process.get(pid, 0) + 1
    kinds = {pid: ("kernel" if "ipykernel" in host.file(f"/proc/{pid}/cmdline").content_string
                   else host.file(f"/proc/{pid}/comm").content_string.strip())
             for pid in per_process}
    assert all(kind in ("kernel", "jupyterhub-sing") for kind in kinds.values()), (
        f"{student.name} runs other listeners: {kinds}\n{listeners}")
    assert all(count == 1 for count in per_process.values()), (
        f"a process of {student.name} listens on several TCP ports (a kernel's channels, "
        f"open to every local user): {per_process} {kinds}\n{listeners}")
    assert int(seen.stdout) == sum(per_process.values()), (
        f"the other student sees {seen.stdout.strip()} listeners of {student.name}")
    # Its sockets, seen from outside the unit: in its private /tmp (PrivateTmp), theirs.
    unit = f"jupyter-{student.name}-singleuser.service"
    sockets = host.run(f"find /tmp -path '*-{unit}-*' -name 'kernel-*-ipc-*' -type s -user {uid}")
    assert len(sockets.stdout.split()) >= 5, (
        f"no kernel sockets in {student.name}'s private /tmp: {sockets.stdout}{sockets.stderr}")


def test_admin_sees_every_student(admin_client, student, other):
    admin, client = admin_client
    api = {"X-XSRFToken": client.cookie("_xsrf", "/hub") or ""}
    status, _, text = client.request("GET", "/hub/api/users", headers=api)
    assert status == 200, f"HTTP {status}: {text[:300]}"
    users = {u["name"]: u for u in json.loads(text)}
    assert {student.name, other.name} <= set(users), sorted(users)
    assert users[admin]["admin"] is True
    assert users[student.name]["server"], f"{student.name}'s server is not listed as running"
    status, _, _, _ = client.get("/hub/admin")
    assert status == 200
