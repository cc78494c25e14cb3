"""Faults the hub must survive: the hub or the proxy process is killed; students keep working."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.disruptive

HUB_API_UP = ("/opt/hubkiln/hub/bin/python -c \"import urllib.request; "
              "urllib.request.urlopen('http://127.0.0.1:8081/hub/api', timeout=10)\"")


def wait_until(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(3)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def server_answers(student) -> bool:
    try:
        status, _, _, _ = student.client.get(f"/user/{student.name}/api/status", timeout=30)
    except OSError:  # timed out or reset while the hub or proxy is down
        return False
    return status == 200


@pytest.mark.parametrize("unit", ["jupyterhub.service", "jupyterhub-proxy.service"])
def test_killed_process_comes_back_and_the_student_server_survives(host, student, journal,
                                                                   unit):
    server_unit = f"jupyter-{student.name}-singleuser"
    server_pid = host.run(f"systemctl show -P MainPID {server_unit}").stdout.strip()
    pid = host.run(f"systemctl show -P MainPID {unit}").stdout.strip()
    assert host.run(f"kill -KILL {pid}").rc == 0
    try:
        wait_until(lambda: host.run(f"systemctl show -P MainPID {unit}").stdout.strip()
                   not in ("0", pid), 60, f"systemd restarted {unit}")
        wait_until(lambda: host.run(HUB_API_UP).rc == 0, 420, "the hub answers again")
        # After a proxy restart the hub re-adds the routes (every minute, and at its start).
        wait_until(lambda: server_answers(student), 240, "the student's server answers again")
    except AssertionError as error:
        raise AssertionError(f"{error}{journal(unit)}") from None
    assert host.run(f"systemctl show -P MainPID {server_unit}").stdout.strip() == server_pid, (
        "the student's server was restarted")
