"""At class start the hub, its proxy and the front come before the students' servers.

Every login and every request of a class passes jupyterhub, configurable-http-proxy
and Caddy. When the students' servers and kernels keep every CPU busy, these three
must still get the CPU, or logins wait behind spawns (issue 14: login p95 15.5 s for
60 students on 2 cores before this). Two kernels' schedulers are covered: cgroup v2's
cpu controller (the students' slice weighs half of system.slice) and autogroups
(where the cpu controller is not in use, each session gets an equal share unless its
autogroup's nice says otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

#: The kernels' nice, as provision/40-user-env.sh installs them (the repository's value).
KERNEL_NICE = int(re.search(r"^KERNEL_NICE=(\d+)$", (
    Path(__file__).resolve().parents[2] / "provision/40-user-env.sh").read_text(), re.M)[1])

FIRST = ("jupyterhub.service", "jupyterhub-proxy.service", "hubkiln-front.service")
#: What hubkiln-class-priority.conf and hubkiln-students.slice promise.
NICE, AUTOGROUP_NICE, STUDENTS_WEIGHT = -5, -20, 50


def main_pid(host, unit: str) -> int:
    pid = int(host.run(f"systemctl show -P MainPID {unit}").stdout.strip() or 0)
    assert pid > 0, f"{unit} has no main process"
    return pid


@pytest.mark.parametrize("unit", FIRST)
def test_the_unit_runs_before_students_by_nice(host, journal, unit):
    pid = main_pid(host, unit)
    nice = int(host.run(f"ps -o ni= -p {pid}").stdout.strip())
    assert nice == NICE, f"{unit} (pid {pid}) runs at nice {nice}" + journal(unit)


@pytest.mark.parametrize("unit", FIRST)
def test_the_units_session_outweighs_a_students_under_autogroups(host, journal, unit):
    pid = main_pid(host, unit)
    shown = host.run(f"cat /proc/{pid}/autogroup")
    if shown.rc != 0:
        assert "No such file" in shown.stderr, shown.stderr
        pytest.skip("this kernel has no autogroups (CONFIG_SCHED_AUTOGROUP): "
                    "the cpu controller's weights are what counts")
    assert shown.stdout.split()[-2:] == ["nice", str(AUTOGROUP_NICE)], (
        f"{unit}: {shown.stdout.strip()}" + journal(unit))


def test_students_slice_weighs_less_than_the_system(host):
    shown = host.run("systemctl show -P CPUWeight hubkiln-students.slice").stdout.strip()
    assert shown == str(STUDENTS_WEIGHT)
    system = host.run("systemctl show -P CPUWeight system.slice").stdout.strip()
    assert system in ("[not set]", "", "100"), f"system.slice CPUWeight={system}"


def test_a_students_kernel_comes_after_the_servers_and_cannot_raise_itself(kernel):
    """Kernels start at KERNEL_NICE (hubkiln-kernel), so that at class start the first
    cells' imports leave the CPU to the servers still starting; the student's code in
    the kernel cannot lower its own nice value (no CAP_SYS_NICE)."""
    run = kernel.execute(
        "import os\n"
        "print(os.nice(0))\n"
        "try:\n"
        "    os.nice(-1)\n"
        "    print('raised', os.nice(0))\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "try:\n"
        "    print(open('/proc/self/autogroup').read().split()[-1])\n"
        "except OSError:\n"
        "    print('no-autogroups')\n")
    assert run.error is None, run.error
    nice, attempt, autogroup = run.stdout.split("\n")[:3]
    assert int(nice) == KERNEL_NICE, f"the kernel runs at nice {nice}, not {KERNEL_NICE}"
    assert attempt == "refused", f"the student's kernel raised its own priority: {attempt}"
    assert autogroup in (str(KERNEL_NICE), "no-autogroups"), (
        f"the kernel's autogroup is at nice {autogroup}, not {KERNEL_NICE}")
