"""Faults the hub must survive: the hub or the proxy is killed; students keep working."""

from __future__ import annotations

import time

import pytest


def wait_until(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(3)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def server_answers(student) -> bool:
    status, _, _, _ = student.client.get(f"/user/{student.name}/api/status")
    return status == 200


@pytest.mark.parametrize("unit", ["jupyterhub.service", "jupyterhub-proxy.service"])
def test_killed_service_comes_back_and_the_student_server_survives(host, student, journal,
                                                                   unit):
    server_unit = f"jupyter-{student.name}-singleuser"
    pid = host.run(f"systemctl show -P MainPID {server_unit}").stdout.strip()
    assert host.run(f"systemctl kill --signal=KILL {unit}").rc == 0
    try:
        wait_until(lambda: host.run(f"systemctl is-active {unit}").stdout.strip() == "active",
                   120, f"{unit} restarted")
        # The hub re-adds the proxy's routes (at start, and every minute).
        wait_until(lambda: server_answers(student), 240, "the student's server answers again")
    except AssertionError as error:
        raise AssertionError(f"{error}{journal(unit)}") from None
    assert host.run(f"systemctl show -P MainPID {server_unit}").stdout.strip() == pid, (
        "the student's server was restarted")
