"""The machines of a load test: the image booted in a container or a VM, and what is sampled.

Both give the load client a way to reach the hub (the container's network namespace,
or the VM's forwarded HTTPS port), run commands in the guest, and are sampled every
5 s by a small script in the guest (memory and CPU of the hub and of each student's
server, from their cgroups and /proc), so that the record can say what a student costs.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from hubkiln.capacity.record import (
    cpu_role,
    parse_memory_current,
    student_unit,
)
from hubkiln.config.guest import settings as guest_settings
from hubkiln.errors import BuildError

#: Seconds between the host's samples of memory and load.
SAMPLE_INTERVAL = 5.0


# ------------------------------------------------------------------ the machine's side
#: Runs in the guest (the image's hub Python), every SAMPLE_INTERVAL s: each process of a
#: student's server unit (its cgroup lines, PSS, whether it is a kernel), every
#: process's CPU time so far (with its start time, so that a reused pid is another
#: process), the machine's busy CPU time, the units' cgroup memory as the guest's
#: systemd reports it, memory and load. Which unit and role a process belongs to is
#: decided on the host (student_unit, cpu_role).
SAMPLE_SCRIPT = """\
import json, os, subprocess
processes, cpu = [], []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cgroup = open(f"/proc/{pid}/cgroup").read()
        stat = open(f"/proc/{pid}/stat").read()
        kernel = b"ipykernel" in open(f"/proc/{pid}/cmdline", "rb").read()
        student = "-singleuser.service" in cgroup
        rollup = open(f"/proc/{pid}/smaps_rollup").read() if student else ""
    except OSError:  # the process ended meanwhile
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    # utime + stime (fields 14 and 15 of stat) and the start time (22): who it is.
    cpu.append([int(pid), int(fields[19]), int(fields[11]) + int(fields[12]), cgroup, kernel])
    if student:
        pss = sum(int(line.split()[1]) * 1024 for line in rollup.splitlines()
                  if line.startswith("Pss:"))
        processes.append([cgroup, pss, kernel])
try:
    shown = subprocess.run(["systemctl", "show", "-p", "Id", "-p", "MemoryCurrent",
                            "hubkiln-students.slice", "jupyter-*-singleuser.service"],
                           capture_output=True, text=True, timeout=20).stdout
except (OSError, subprocess.SubprocessError):
    shown = ""
memory = {line.split(":")[0]: int(line.split()[1]) * 1024
          for line in open("/proc/meminfo") if line.split()[1:2]}
busy = open("/proc/stat").readline().split()[1:]
print(json.dumps({"processes": processes, "memory_current": shown, "cpu": cpu,
                  "busy_ticks": sum(map(int, busy[:3] + busy[5:8])),
                  "clock_ticks": os.sysconf("SC_CLK_TCK"),
                  "load1": os.getloadavg()[0], "mem_available": memory["MemAvailable"],
                  "mem_total": memory["MemTotal"], "cpus": os.cpu_count()}))
"""


GUEST_PYTHON = "/opt/hubkiln/hub/bin/python"


def units_of(processes: list[list[Any]]) -> dict[str, dict[str, Any]]:
    """Each student unit's PSS and whether it runs a kernel, from the processes the
    sampling script found (pure)."""
    units: dict[str, dict[str, Any]] = {}
    for cgroup, pss, kernel in processes:
        if (name := student_unit(cgroup)) is None:
            continue
        unit = units.setdefault(name, {"pss": 0, "kernel": False})
        unit["pss"] += pss
        unit["kernel"] = unit["kernel"] or kernel
    return units


def cpu_of(processes: list[list[Any]], clock_ticks: int) -> dict[str, list[Any]]:
    """Each process's role and CPU seconds so far, by "pid:start time" (pure)."""
    return {f"{pid}:{start}": [cpu_role(cgroup, kernel), round(ticks / clock_ticks, 2)]
            for pid, start, ticks, cgroup, kernel in processes}


def parse_sample(output: str) -> dict[str, Any]:
    """One sample from the sampling script's output (pure)."""
    raw = json.loads(output)
    return {"t": round(time.time(), 1), "load1": raw["load1"],
            "mem_available": raw["mem_available"], "mem_total": raw["mem_total"],
            "cpus": raw["cpus"], "units": units_of(raw["processes"]),
            "cgroup": parse_memory_current(raw["memory_current"]),
            "cpu": cpu_of(raw["cpu"], raw["clock_ticks"]),
            "busy_seconds": round(raw["busy_ticks"] / raw["clock_ticks"], 2)}


class Sampler(threading.Thread):
    """Samples the machine every SAMPLE_INTERVAL s until `done` is set."""

    def __init__(self, machine: Any):
        super().__init__(daemon=True)
        self.machine, self.samples = machine, []
        self.done = threading.Event()

    def sample(self) -> dict[str, Any]:
        ran = self.machine.guest([GUEST_PYTHON, "-c", SAMPLE_SCRIPT], timeout=60)
        if ran.returncode != 0:
            raise OSError(f"sampling failed: {ran.stderr[-300:]}")
        return parse_sample(ran.stdout)

    def run(self) -> None:
        while not self.done.is_set():
            # A sample fails only while the machine goes away: keep those before it.
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                self.samples.append(self.sample())
            self.done.wait(SAMPLE_INTERVAL)


class ContainerMachine:
    """The image in systemd-nspawn: the client runs in its network namespace."""

    engine, base_url = "container", "https://localhost"  # a name: cookies for IP hosts
    host_note = ("the host's: the container shares its kernel, so other work on the host "
                 "counts too")

    def __init__(self, box: Any):
        self.box = box

    def alive(self) -> bool:
        return self.box.alive()

    def tail(self) -> str:
        return self.box.console_tail()

    def guest(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """`command` inside every namespace of the container (its systemd, its /proc)."""
        return subprocess.run(["nsenter", "-t", str(self.box.leader), "-a", "--", *command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def client(self, argv: list[str]) -> list[str]:
        return self.box.in_netns(argv)


class VmMachine:
    """The image under qemu: the client runs on the host against the forwarded port, and
    the guest is read over SSH as the admin's SSH account."""

    engine = "vm"
    host_note = "the guest's own"

    def __init__(self, vm: Any, key: Path):
        self.vm, self.key = vm, key
        self.base_url = f"https://localhost:{vm.spec.forwards[443]}"

    def alive(self) -> bool:
        return self.vm.alive()

    def tail(self) -> str:
        return self.vm.serial_tail()

    def guest(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return self.vm.ssh(OPERATOR, self.key, "sudo -n " + shlex.join(command),
                           timeout=timeout, check=False)

    def client(self, argv: list[str]) -> list[str]:
        return argv


def wait_for_first_boot(machine: Any, timeout: float) -> float:
    """Seconds until the guest's first boot is over and jupyterhub.service runs."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not machine.alive():
            raise BuildError("the machine stopped during first boot:\n" + machine.tail())
        states = machine.guest(["systemctl", "is-active", "hubkiln-firstboot.service",
                                "jupyterhub.service"]).stdout.split()
        if states[:1] == ["failed"]:
            journal = machine.guest(["journalctl", "--no-pager", "-n", "30", "-u",
                                     "hubkiln-firstboot.service"]).stdout
            raise BuildError("the image's first boot failed, so the class would meet a "
                             f"hub without its launch settings:\n{journal}")
        if len(states) == 2 and states[0] not in ("activating", "inactive") \
                and states[1] == "active":
            return time.monotonic() - started
        time.sleep(3)
    raise BuildError(f"the hub did not start within {timeout:.0f} s:\n" + machine.tail())


ADMIN = "teacher"


#: The admin's SSH account (with sudo): how the VM's guest is read.
OPERATOR = guest_settings().operator_name(ADMIN)
