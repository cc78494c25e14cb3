"""Cloud metadata is closed to everyone but root (docs/hardening.md, "Cloud metadata").

The attack: a student (or any service account) asks the cloud's metadata service for
the instance's credentials or its user data, which holds the launch settings (the
roster, the admins, perhaps a TLS key). qemu's user network serves no metadata, so
the test puts stand-ins on `lo`: every address of hubkiln_hardening.METADATA_ADDRESSES,
with a root-owned listener on port 80. Then it connects as root (must answer: the
stand-in is live, else the test would prove nothing), as the first roster student,
as `nobody`, and from inside the student's own kernel (all must be refused). On an
image without the output rules every one of them connects, and the test fails.
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

#: Proven in the VM only (the guest's nftables output rules): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("firewall")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "provision/files/hardening"))
from hubkiln_hardening import METADATA_ADDRESSES  # noqa: E402

UNIT = "hubkiln-metadata-standin"
SCRIPT = f"/run/{UNIT}.py"
REPLY = "hubkiln-metadata-standin"
#: Not 80: the front listens on *:80 (the bind would fail). The rules block every TCP
#: port of these addresses but 53 (DNS on some clouds), so any other port proves them.
PORT = 8775
#: One listener thread per address; the unit's RuntimeMaxSec bounds its life.
STANDIN = f"""import socket, sys, threading
def serve(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, {PORT}))
    server.listen(16)
    while True:
        conn, _ = server.accept()
        conn.sendall(b"{REPLY}\\n")
        conn.close()
threads = [threading.Thread(target=serve, args=(a,)) for a in sys.argv[1:]]
for thread in threads:
    thread.start()
"""
#: The client: says it started (so that a refusal is not a crash), then connects.
PROBE = ("import socket, sys; print('connecting', flush=True); "
         f"conn = socket.create_connection((sys.argv[1], {PORT}), timeout=5); "
         "print(conn.recv(64).decode().strip())")
#: What a blocked connection looks like: reset by the rule (refused), or dropped.
BLOCKED = ("ConnectionRefusedError", "TimeoutError", "timed out")



def prefix(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


@pytest.fixture
def standin(host, hardening, journal):
    """Listeners on port 80 of every metadata address, put on `lo`; removed after."""
    try:
        for address in METADATA_ADDRESSES:
            flags = " nodad" if ":" in address else ""
            added = host.run(f"ip addr replace {prefix(address)} dev lo{flags}")
            assert added.rc == 0, f"putting {address} on lo: {added.stderr}"
        encoded = base64.b64encode(STANDIN.encode()).decode()
        written = host.run(f"echo {encoded} | base64 -d > {SCRIPT}")
        assert written.rc == 0, written.stderr
        started = host.run(f"systemd-run --unit={UNIT} --collect -p RuntimeMaxSec=300 "
                           f"/usr/bin/python3 {SCRIPT} {' '.join(METADATA_ADDRESSES)}")
        assert started.rc == 0, started.stderr
        listening = " && ".join(f"ss -Htln | grep -qF '{a}]:{PORT}'" if ":" in a
                                else f"ss -Htln | grep -qF '{a}:{PORT}'"
                                for a in METADATA_ADDRESSES)
        ready = host.run(f"timeout 30 sh -c {shlex.quote(f'until {listening}; do sleep 1; done')}")
        assert ready.rc == 0, "the stand-in listeners did not come up" + journal(f"{UNIT}.service")
        yield
    finally:
        host.run(f"systemctl stop {UNIT}.service")
        for address in METADATA_ADDRESSES:
            host.run(f"ip addr del {prefix(address)} dev lo")  # absent already: nothing to undo
        host.run(f"rm -f {SCRIPT}")


def connect_as(host: Any, user: str, address: str):
    """Connect to the stand-in at `address` as `user` (runuser: no login shell needed)."""
    run_as = "" if user == "root" else f"runuser -u {shlex.quote(user)} -- "
    return host.run(f"cd / && {run_as}timeout 20 python3 -c {shlex.quote(PROBE)} {address}")


def assert_refused(result, who: str, address: str) -> None:
    assert "connecting" in result.stdout, f"the probe as {who} did not run: {result.stderr}"
    assert result.rc != 0 and REPLY not in result.stdout, (
        f"{who} reached the metadata stand-in at {address}: {result.stdout}")
    assert any(word in result.stderr for word in BLOCKED), (
        f"{who}'s connection to {address} failed for another reason: {result.stderr[-300:]}")


@pytest.mark.parametrize("address", METADATA_ADDRESSES)
def test_root_reaches_the_metadata_standin(host, standin, address):
    """cloud-init and the clouds' agents run as root: they keep the metadata."""
    result = connect_as(host, "root", address)
    assert result.rc == 0 and REPLY in result.stdout, (
        f"root cannot reach the stand-in at {address}: {result.stdout}{result.stderr}")


@pytest.mark.parametrize("address", METADATA_ADDRESSES)
def test_a_student_account_cannot_reach_metadata(host, student, standin, address):
    assert connect_as(host, "root", address).rc == 0, "the stand-in is not live"
    assert_refused(connect_as(host, student.name, address), student.name, address)


@pytest.mark.parametrize("address", METADATA_ADDRESSES)
def test_a_system_account_cannot_reach_metadata(host, standin, address):
    assert connect_as(host, "root", address).rc == 0, "the stand-in is not live"
    assert_refused(connect_as(host, "nobody", address), "nobody", address)


def test_the_students_own_kernel_cannot_reach_metadata(host, kernel, standin):
    """From inside the student's real server (its unit's sandbox, its uid), over the
    kernel's websocket, as a notebook cell would."""
    for address in METADATA_ADDRESSES:
        assert connect_as(host, "root", address).rc == 0, f"the stand-in at {address} is not live"
    cell = kernel.execute(
        "import json, socket\n"
        "found = {}\n"
        f"for address in {list(METADATA_ADDRESSES)!r}:\n"
        "    try:\n"
        f"        with socket.create_connection((address, {PORT}), timeout=5) as conn:\n"
        "            found[address] = 'answered: ' + conn.recv(64).decode().strip()\n"
        "    except OSError as error:\n"
        "        found[address] = type(error).__name__ + ': ' + str(error)\n"
        "print(json.dumps(found))\n", timeout=120)
    assert cell.error is None, cell.error
    found = json.loads(cell.stdout.strip().splitlines()[-1])
    reached = {a: r for a, r in found.items() if r.startswith("answered")}
    assert not reached, f"the student's kernel reached metadata: {reached}"
    other = {a: r for a, r in found.items() if not any(word in r for word in BLOCKED)}
    assert not other, f"the kernel's connections failed for another reason: {other}"
