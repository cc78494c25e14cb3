"""Class start, measured: boot an image, let N roster students log in at once, record it.

`invoke loadtest --profile=NAME --students N` boots the profile's built image (or
`--image`) with generated launch settings: one admin and a roster of N (`student001`,
...) with issued enrolment codes. The engine is a container (hubkiln/container.py;
the client runs in its network namespace) or a VM (hubkiln/vm.py; the client runs on
the host against the forwarded HTTPS port, and the guest is read over SSH as the
admin's SSH account). The load client (hubkiln/loadclient.py) drives the students
through the real login form, the spawn, JupyterLab, a kernel and cells; meanwhile a
script in the guest samples each student's memory and the load. The record goes to
`output/NAME/capacity.json` (`capacity-prestart.json` with `--prestart`), with a one-line
sizing summary.

Honest limits: a container shares the build host's kernel, so there the load average
and MemAvailable are the host's (with whatever else runs there), and on a host whose
memory controller is on cgroup v1 the units' cgroup memory is not accounted: the
per-student figure is the PSS of each student's unit's processes, on both engines.
A class-scale run in a VM needs KVM: under TCG one spawn takes a minute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hubkiln.capacity import client as loadclient
from hubkiln.config import launch
from hubkiln.config.guest import settings as guest_settings
from hubkiln.config.profile import Profile, load_profile
from hubkiln.errors import BuildError
from hubkiln.machine import accel, seed
from hubkiln.machine.vm import Vm, VmSpec, free_port
from hubkiln.paths import PROJECT_DIR, output_dir
from hubkiln.progress import Progress
from hubkiln.stages import artifacts, chroot

ENGINES = ("container", "vm")  # and "auto", which picks one (choose_engine)
MAX_STUDENTS = 500
MAX_SECONDS = 3600
ADMIN = "teacher"
#: The admin's SSH account (with sudo): how the VM's guest is read.
OPERATOR = guest_settings().operator_name(ADMIN)
#: Memory of the VM engine's guest: room for 60 active students of the ci image (154 MiB
#: each, measured in a container) and the hub. The sizing line states what the guest had.
VM_MEMORY_MIB = 16384
VM_BOOT_TIMEOUT = 900
RECORD = "capacity.json"
#: A class whose servers a class_schedule pre-started: another figure, another file.
PRESTART_RECORD = "capacity-prestart.json"
STEPS = ("login", "spawn", "lab", "kernel", "first_cell", "cell", "stop")
#: Seconds between the host's samples of memory and load.
SAMPLE_INTERVAL = 5.0
#: Seconds the hub may take after the container starts (first boot, then the hub).
HUB_WAIT = 600
CELL_INTERVAL = 20
MIB = 1 << 20
UNIT = re.compile(r"/jupyter-([a-z][a-z0-9_-]*)-singleuser\.service(?:/|$)")


# ------------------------------------------------------------------ pure parts
def check_arguments(students: int, ramp: float, active: float, engine: str) -> None:
    """Refuse what the benchmark cannot run, naming every bad option (pure)."""
    problems = []
    if not 1 <= students <= MAX_STUDENTS:
        problems.append(f"--students {students}: give 1 to {MAX_STUDENTS}")
    for option, value in (("--ramp", ramp), ("--active", active)):
        if not 0 <= value <= MAX_SECONDS:
            problems.append(f"{option} {value}: give 0 to {MAX_SECONDS} seconds")
    if engine not in ENGINES:
        problems.append(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    if problems:
        raise BuildError("cannot run the load test: " + "; ".join(problems),
                         hint="see `invoke loadtest --help`")


def roster(students: int) -> list[str]:
    """The generated roster: student001, student002, ... (pure)."""
    return [f"student{number:03d}" for number in range(1, students + 1)]


def arrival_schedule(students: int, ramp: float) -> list[float]:
    """Seconds after the start at which each student logs in: evenly over the ramp,
    the first at once (pure)."""
    return [round(ramp * index / students, 3) for index in range(students)]


def percentiles(values: list[float]) -> dict[str, Any]:
    """count, p50, p95 and max of `values` by the nearest-rank method (pure)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"count": len(ordered), "p50": rank(0.50), "p95": rank(0.95),
            "max": round(ordered[-1], 3)}


def step_statistics(students: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """p50, p95 and max of each step over the students that completed it (pure)."""
    found = {step: [s["steps"][step] for s in students if step in s["steps"]]
             for step in STEPS}
    found["cell"] = [seconds for s in students for seconds in s["cells"]]
    return {step: percentiles(found[step]) for step in STEPS}


def failures_by_kind(students: list[dict[str, Any]]) -> dict[str, int]:
    """`step: kind` -> how many students failed so (pure)."""
    counts: dict[str, int] = {}
    for student in students:
        if failure := student.get("failure"):
            key = f"{failure['step']}: {failure['kind']}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def student_unit(cgroup_text: str) -> str | None:
    """The student whose server unit a process's /proc/PID/cgroup names, or None (pure)."""
    for line in cgroup_text.splitlines():
        if match := UNIT.search(line):
            return match.group(1)
    return None


def parse_memory_current(text: str) -> dict[str, int | None]:
    """`systemctl show -p Id -p MemoryCurrent UNIT...` -> unit: bytes, or None where
    systemd does not account it ([not set], infinity) (pure)."""
    found: dict[str, int | None] = {}
    for block in text.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in fields:
            value = fields.get("MemoryCurrent", "")
            found[fields["Id"]] = int(value) if value.isdigit() else None
    return found


def memory_per_student(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each student's peak PSS while active (server and course kernel, during the class)
    and idle (server without a kernel, in the samples `after` the class, when every
    kernel was shut down), then median and max over the students, in MiB (pure). A
    server without a kernel during the class may still be starting: not counted."""
    peaks: dict[str, dict[str, int]] = {"idle": {}, "active": {}}
    for sample in samples:
        for name, unit in sample.get("units", {}).items():
            if unit["kernel"] == bool(sample.get("after")):
                continue
            state = peaks["idle" if sample.get("after") else "active"]
            state[name] = max(state.get(name, 0), unit["pss"])
    return {state: {"students": len(values),
                    "median_mib": round(statistics.median(values.values()) / MIB, 1)
                    if values else None,
                    "max_mib": round(max(values.values()) / MIB, 1) if values else None}
            for state, values in peaks.items()}


def cgroup_memory(samples: list[dict[str, Any]], engine: str) -> dict[str, Any] | str:
    """The students' slice's cgroup memory at its peak, or why it was not measurable."""
    values = [s["cgroup"].get("hubkiln-students.slice") for s in samples if s.get("cgroup")]
    measured = [v for v in values if v is not None]
    if not measured:
        where = "this container" if engine == "container" else "this machine"
        return (f"not measurable in {where}: systemd does not account the units' memory "
                "(MemoryCurrent [not set]; a container shares the host's cgroups, and "
                "this build host's memory controller is on cgroup v1)")
    return {"students_slice_peak_mib": round(max(measured) / MIB, 1)}


def capacity_record(*, profile: str, image: str, engine: str, students: int, ramp: float,
                    active: float, client: dict[str, Any], samples: list[dict[str, Any]],
                    host_note: str, boot_seconds: float,
                    schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one run, from the client's results and the host's samples (pure)."""
    done = [s for s in client["students"] if not s.get("failure")]
    api = client.get("monitor", [])
    loads = [s["load1"] for s in samples]
    available = [s["mem_available"] for s in samples]
    host = {"cpus": samples[0]["cpus"] if samples else None,
            "memory_gib": round(samples[0]["mem_total"] / (1 << 30)) if samples else None}
    record = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile, "image": image, "engine": engine, "host": host,
        "class": {"students": students, "ramp_seconds": ramp, "active_seconds": active},
        "prestart": {"class_schedule": schedule, **(client.get("prestart") or {})}
        if schedule else None,
        "first_boot_seconds": round(boot_seconds, 1),
        "login_page_after_first_boot_seconds": client.get("hub_wait_seconds"),
        "completed": len(done),
        "failures": failures_by_kind(client["students"]),
        "failed_students": [{"name": s["name"], **s["failure"]}
                            for s in client["students"] if s.get("failure")],
        "steps": step_statistics(client["students"]),
        "spawn_followed": {way: sum(1 for s in client["students"]
                                    if s.get("spawn_followed") == way)
                           for way in ("progress", "polling")},
        "hub_api": {**percentiles([s["seconds"] for s in api if "error" not in s]),
                    "errors": sum(1 for s in api if "error" in s)},
        "memory": {
            "per_student": memory_per_student(samples),
            "method": "PSS of the processes of each jupyter-NAME-singleuser unit, read "
                      "from the guest's /proc",
            "cgroup": cgroup_memory(samples, engine),
            "mem_available_mib": {
                "start": round(available[0] / MIB) if available else None,
                "min": round(min(available) / MIB) if available else None},
        },
        "cpu": {"load1_max": round(max(loads), 2) if loads else None,
                "load1_mean": round(statistics.mean(loads), 2) if loads else None},
        "load_and_mem_available_are": host_note,
        "deadline_hit": client.get("deadline_hit", False),
    }
    record["sizing"] = sizing_line(record)
    return record


def sizing_line(record: dict[str, Any]) -> str:
    """One line with what was measured, never an estimate (pure)."""
    host, group, steps = record["host"], record["class"], record["steps"]
    failures = sum(record["failures"].values())

    def p95(step: str) -> str:
        value = steps[step]["p95"]
        return f"{value:.1f} s" if value is not None else "none completed"

    active = record["memory"]["per_student"]["active"]["median_mib"]
    idle = record["memory"]["per_student"]["idle"]["median_mib"]
    memory = (f"memory per active student {active:.0f} MiB (server and course kernel, "
              f"median PSS)" if active is not None else "memory per active student not "
              "measured")
    if idle is not None:
        memory += f", idle {idle:.0f} MiB"
    prestart = record.get("prestart")
    ahead = (f", servers pre-started by class_schedule ({prestart.get('ready', 0)} of "
             f"{prestart.get('of', group['students'])} ready)") if prestart else ""
    return (f"{record['engine']} on {host['cpus'] or '?'} vCPU / "
            f"{host['memory_gib'] or '?'} GiB: "
            f"{group['students']} students at class start (logins over "
            f"{group['ramp_seconds']:g} s{ahead}), {record['completed']} completed, login p95 "
            f"{p95('login')}, spawn p95 {p95('spawn')}, {failures} failure"
            f"{'' if failures == 1 else 's'}; {memory}")


# ------------------------------------------------------------------ the machine's side
#: Runs in the guest (the image's hub Python), every SAMPLE_INTERVAL s: each process of a
#: student's server unit (its cgroup lines, PSS, whether it is a kernel), the units'
#: cgroup memory as the guest's systemd reports it, memory and load. Which unit a
#: process belongs to is decided on the host (student_unit).
SAMPLE_SCRIPT = """\
import json, os, subprocess
processes = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cgroup = open(f"/proc/{pid}/cgroup").read()
        if "-singleuser.service" not in cgroup:
            continue
        rollup = open(f"/proc/{pid}/smaps_rollup").read()
        kernel = b"ipykernel" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:  # the process ended meanwhile
        continue
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
print(json.dumps({"processes": processes, "memory_current": shown,
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


def parse_sample(output: str) -> dict[str, Any]:
    """One sample from the sampling script's output (pure)."""
    raw = json.loads(output)
    return {"t": round(time.time(), 1), "load1": raw["load1"],
            "mem_available": raw["mem_available"], "mem_total": raw["mem_total"],
            "cpus": raw["cpus"], "units": units_of(raw["processes"]),
            "cgroup": parse_memory_current(raw["memory_current"])}


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


#: The launch keys the load test sets. Only these go into the seed: the image fills in
#: the rest, and an image baked before a later launch key was added still boots.
LAUNCH_KEYS = ("hostname", "domain", "admins", "users", "ssh_authorized_keys",
               "admin_password_hashes", "enrolment_codes", "enrolment_code_hashes")


#: With --prestart: a session PRESTART_LEAD minutes after the launch, so that its
#: pre-start window (prestart_minutes before it) is open from the first boot on.
PRESTART_LEAD_MINUTES = 5
PRESTART_MINUTES = 10
PRESTART_WAIT = 900
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def prestart_schedule(now: dt.datetime) -> dict[str, Any]:
    """A class_schedule whose one session starts PRESTART_LEAD_MINUTES after `now`
    (an aware datetime), in UTC, lasting two hours (pure)."""
    start = (now.astimezone(dt.UTC) + dt.timedelta(minutes=PRESTART_LEAD_MINUTES)).replace(
        second=0, microsecond=0)
    return {"timezone": "UTC", "prestart_minutes": PRESTART_MINUTES,
            "sessions": [{"days": [WEEKDAYS[start.weekday()]],
                          "start": start.strftime("%H:%M"), "minutes": 120}]}


def launch_settings(students: int, public_key: str | None = None,
                    schedule: dict[str, Any] | None = None
                    ) -> tuple[launch.Launch, launch.Credentials]:
    """One admin (with the SSH key, for the VM) and a generated roster, with an admin
    password and enrolment codes; with `schedule`, its class_schedule (which an image
    baked before that key was added refuses, so it is left out otherwise)."""
    data = {"hostname": "hubkiln-loadtest", "admins": [ADMIN], "users": roster(students),
            "ssh_authorized_keys": [public_key] if public_key else []}
    if schedule:
        data["class_schedule"] = schedule
    doc, problems = launch.validate_launch_data(data, base_dir=Path.cwd(), openssl=None)
    if doc is None:
        raise BuildError(f"the generated launch settings do not check: {problems}")
    settings, credentials = launch.issue_credentials(launch.Launch(data=doc))
    keys = LAUNCH_KEYS + (("class_schedule",) if schedule else ())
    return launch.Launch(data={key: settings[key] for key in keys}), credentials


def client_plan(profile: Profile, credentials: launch.Credentials, students: int,
                ramp: float, active: float, base_url: str,
                prestart: bool = False) -> dict[str, Any]:
    """What the load client does (hubkiln/loadclient.py)."""
    names = roster(students)
    return {
        "base_url": base_url,
        "admin": {"name": ADMIN, "password": credentials.admin_passwords[ADMIN]},
        "students": [{"name": name, "at": at, "code": credentials.enrolment_codes.get(name, ""),
                      "password": f"class-start-{os.urandom(9).hex()}"}
                     for name, at in zip(names, arrival_schedule(students, ramp), strict=True)],
        "first_cell": loadclient.first_cell(profile.name,
                                            profile["environment"]["python_packages"]),
        "active_cell": loadclient.ACTIVE_CELL, "active_seconds": active,
        "cell_interval": CELL_INTERVAL,
        "hub_wait_seconds": HUB_WAIT,
        "prestart_wait_seconds": PRESTART_WAIT if prestart else 0,
        "deadline_seconds": ramp + active + loadclient.SPAWN_TIMEOUT
        + 3 * loadclient.REQUEST_TIMEOUT + loadclient.CELL_TIMEOUT,
    }


def drive_class(machine: Any, files: list[Path], log: Path, timeout: float
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the load client while the machine is sampled; return what the client
    measured and the samples."""
    sampler = Sampler(machine)
    sampler.start()
    try:
        with open(log, "w", encoding="utf-8") as out:
            finished = subprocess.run(
                machine.client([sys.executable, "-m", "hubkiln.capacity.client",
                                *map(str, files)]), cwd=PROJECT_DIR, stdout=out,
                stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BuildError(f"the load client did not end within {timeout:.0f} s",
                         hint=f"see {log}") from None
    finally:
        sampler.done.set()
        sampler.join(timeout=90)
    # The servers stay, their kernels shut down: idle students.
    with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
        sampler.samples.append({**sampler.sample(), "after": True})
    if finished.returncode != 0 or not files[1].exists():
        raise BuildError(f"the load client failed ({finished.returncode})", hint=f"see {log}")
    return json.loads(files[1].read_text(encoding="utf-8")), sampler.samples


@contextlib.contextmanager
def boot(engine: str, image: Path, settings: launch.Launch, key: Path, work: Path,
         logs: Path) -> Iterator[Any]:
    """The image booted with `settings` by `engine`, up to the point where its guest
    answers commands; always torn down."""
    user_data, meta_data = launch.render_user_data(settings), launch.render_meta_data(settings)
    if engine == "container":
        from hubkiln.machine.container import Container, ContainerSpec

        spec = ContainerSpec(image=image, seed={"user-data": user_data, "meta-data": meta_data},
                             work=work / "container", console_log=logs / "loadtest-console.log",
                             machine="hubkiln-loadtest")
        with Container(spec) as box:
            yield ContainerMachine(box)
        return
    iso = seed.make_seed_iso(seed.write_seed_dir(work / "seed", user_data, meta_data),
                             work / "seed.iso")
    # restrict=on: the guest has no way out; the client reaches it on forwarded ports.
    spec = VmSpec(image=image, seed_iso=iso, serial_log=logs / "loadtest-serial.log",
                  accelerator=accel.choose_accelerator(None).name,
                  forwards={22: free_port(), 443: free_port()}, restrict_network=True,
                  memory_mib=VM_MEMORY_MIB, cpus=os.cpu_count() or 2)
    with Vm(spec) as vm:
        vm.wait_for_ssh(OPERATOR, key, timeout=VM_BOOT_TIMEOUT)
        yield VmMachine(vm, key)


#: Journal lines kept per failed student (the machine is thrown away after the run).
FAILED_JOURNAL_LINES = 200


def keep_failed_journals(machine: Any, students: list[dict[str, Any]], logs: Path
                         ) -> list[Path]:
    """Before the machine goes: each failed student's server unit journal (server and
    kernel) into logs/loadtest-failed-NAME.log, with the hub's lines about them."""
    kept = []
    for student in students:
        if not student.get("failure"):
            continue
        name = student["name"]  # roster names are their own Unix names
        unit = f"jupyter-{name}-singleuser.service"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server = machine.guest(["journalctl", "--no-pager", "-o", "short-precise", "-u",
                                    unit, "-n", str(FAILED_JOURNAL_LINES)], timeout=60).stdout
            hub = machine.guest(["journalctl", "--no-pager", "-o", "short-precise", "-u",
                                 "jupyterhub.service", "-g", name, "-n",
                                 str(FAILED_JOURNAL_LINES)], timeout=60).stdout
            path = logs / f"loadtest-failed-{name}.log"
            path.write_text(f"# {name}: {student['failure']}\n# {unit}\n{server}\n"
                            f"# jupyterhub.service, lines naming {name}\n{hub}",
                            encoding="utf-8")
            kept.append(path)
    return kept


def find_image(profile: Profile, image: str | None) -> Path:
    if image:
        path = Path(image)
    else:
        manifest = artifacts.read_manifest(output_dir(profile))
        if manifest is None:
            raise BuildError(f"no built image for {profile.name} in {output_dir(profile)}",
                             hint=f"run `invoke build --profile={profile.name}` or give --image")
        path = output_dir(profile) / manifest["files"][0]["name"]
    if not path.is_file():
        raise BuildError(f"no image at {path}", hint="give --image PATH of a built .qcow2")
    return path


def choose_engine(engine: str, accelerator: str) -> str:
    """`auto`: the VM where it runs at native speed (KVM), else the container (pure)."""
    if engine != "auto":
        return engine
    return "vm" if accelerator == "kvm" else "container"


PRESTART_KEY = "capacity_prestart"


def record_capacity(out: Path, image: Path, record: dict[str, Any]) -> bool:
    """The sizing line into the manifest (and README) of `out`, when `image` is the image
    that manifest describes, under `capacity`, or `capacity_prestart` for a class whose
    servers a class_schedule pre-started; True when it went in."""
    manifest = artifacts.read_manifest(out)
    if manifest is None or image.resolve() != (out / manifest["files"][0]["name"]).resolve():
        return False
    # A class with pre-started servers is another figure: each keeps its own line.
    manifest[PRESTART_KEY if record.get("prestart") else "capacity"] = {
        "sizing": record["sizing"], "at": record["at"],
        "file": PRESTART_RECORD if record.get("prestart") else RECORD,
        "engine": record["engine"], "students": record["class"]["students"],
        "completed": record["completed"], "failures": sum(record["failures"].values()),
        "steps_p95": {step: record["steps"][step]["p95"] for step in ("login", "spawn")}}
    artifacts.write_manifest(out, manifest)
    return True


def run_loadtest(profile_ref: str, *, students: int, ramp: float = 60, active: float = 120,
                 engine: str = "auto", image: str | None = None,
                 progress: Progress | None = None, out: Path | None = None,
                 prestart: bool = False) -> dict[str, Any]:
    """Boot the image, drive the class, write capacity.json into `out` (the profile's
    output folder); when the image is that folder's, the sizing line goes into its
    manifest too. Return the record."""
    engine = choose_engine(engine, accel.choose_accelerator(None).name
                           if engine == "auto" else "")
    check_arguments(students, ramp, active, engine)
    progress = progress or Progress()
    profile = load_profile(profile_ref)
    out = out or output_dir(profile)
    path = find_image(profile, image)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hubkiln-loadtest-") as tmp:
        work = Path(tmp)
        key = work / "admin-key"
        schedule = prestart_schedule(dt.datetime.now(dt.UTC)) if prestart else None
        settings, credentials = launch_settings(students, seed.make_ssh_key(key, "loadtest"),
                                                schedule)
        plan_file, results = work / "plan.json", work / "results.json"
        with progress.stage("loadtest", f"{students} students on {path.name} ({engine})"), \
                chroot.sigterm_raises(), boot(engine, path, settings, key, work,
                                              logs) as machine:  # SIGTERM: torn down too
            waited = wait_for_first_boot(machine, HUB_WAIT)
            progress.detail(f"first boot over after {waited:.0f} s; driving the class")
            plan = client_plan(profile, credentials, students, ramp, active, machine.base_url,
                               prestart=prestart)
            plan_file.touch(mode=0o600)  # the students' codes and the admin's password
            plan_file.write_text(json.dumps(plan), encoding="utf-8")
            client, samples = drive_class(machine, [plan_file, results],
                                          logs / "loadtest-client.log",
                                          HUB_WAIT + plan["prestart_wait_seconds"]
                                          + plan["deadline_seconds"] + 120)
            keep_failed_journals(machine, client["students"], logs)
            label = engine if engine == "container" else f"vm ({machine.vm.spec.accelerator})"
    record = capacity_record(profile=profile.name, image=path.name, engine=label,
                             students=students, ramp=ramp, active=active, client=client,
                             schedule=schedule,
                             samples=samples, host_note=machine.host_note,
                             boot_seconds=waited)
    artifacts.write_json(out / (PRESTART_RECORD if prestart else RECORD), record)
    record_capacity(out, path, record)
    return record
