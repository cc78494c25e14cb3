"""Class start, measured: boot an image, let N roster students log in at once, record it.

`invoke loadtest --profile=NAME --students N` boots the profile's built image (or
`--image`) with generated launch settings: one admin and a roster of N (`student001`,
...) with issued enrolment codes. The engine is a container (hubkiln/machine/container.py;
the client runs in its network namespace) or a VM (hubkiln/machine/vm.py; the client runs on
the host against the forwarded HTTPS port, and the guest is read over SSH as the
admin's SSH account). The load client (hubkiln/capacity/client.py) drives the students
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
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hubkiln import proc
from hubkiln.capacity import cells
from hubkiln.capacity import client as loadclient
from hubkiln.capacity.machines import (
    ADMIN,
    OPERATOR,
    ContainerMachine,
    Sampler,
    VmMachine,
    wait_for_first_boot,
)
from hubkiln.capacity.record import (
    PRESTART_RECORD,
    RECORD,
    capacity_record,
    record_capacity,
)
from hubkiln.config import launch
from hubkiln.config.profile import Profile, load_profile
from hubkiln.deliver import seed
from hubkiln.errors import BuildError
from hubkiln.machine import accel, nocloud
from hubkiln.machine.container import Container, ContainerSpec
from hubkiln.machine.vm import Vm, VmSpec, free_port
from hubkiln.paths import PROJECT_DIR, output_dir
from hubkiln.progress import Progress
from hubkiln.stages import artifacts

ENGINES = ("container", "vm")  # and "auto", which picks one (choose_engine)
MAX_STUDENTS = 500
MAX_SECONDS = 3600
#: Memory of the VM engine's guest: room for 60 active students of the ci image (154 MiB
#: each, measured in a container) and the hub. The sizing line states what the guest had.
VM_MEMORY_MIB = 16384
VM_BOOT_TIMEOUT = 900
#: Seconds the hub may take after the container starts (first boot, then the hub).
HUB_WAIT = 600
CELL_INTERVAL = 20


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
                    ) -> tuple[launch.Launch, seed.Credentials]:
    """One admin (with the SSH key, for the VM) and a generated roster, with an admin
    password and enrolment codes; with `schedule`, its class_schedule (which an image
    baked before that key was added refuses, so it is left out otherwise)."""
    data = {"hostname": "hubkiln-loadtest", "admins": [ADMIN], "users": roster(students),
            "ssh_authorized_keys": [public_key] if public_key else []}
    if schedule:
        data["class_schedule"] = schedule
    doc, problems = launch.check_launch_data(data, base_dir=Path.cwd(), openssl=None)
    if doc is None:
        raise BuildError(f"the generated launch settings do not check: {problems}")
    settings, credentials = seed.issue_credentials(launch.Launch(data=doc))
    keys = LAUNCH_KEYS + (("class_schedule",) if schedule else ())
    return launch.Launch(data={key: settings[key] for key in keys}), credentials


def client_plan(profile: Profile, credentials: seed.Credentials, students: int,
                ramp: float, active: float, base_url: str,
                prestart: bool = False) -> dict[str, Any]:
    """What the load client does (hubkiln/capacity/client.py)."""
    names = roster(students)
    return {
        "base_url": base_url,
        "admin": {"name": ADMIN, "password": credentials.admin_passwords[ADMIN]},
        "students": [{"name": name, "at": at, "code": credentials.enrolment_codes.get(name, ""),
                      "password": f"class-start-{os.urandom(9).hex()}"}
                     for name, at in zip(names, arrival_schedule(students, ramp), strict=True)],
        "first_cell": cells.first_cell(profile.name,
                                            profile["environment"]["python_packages"]),
        "active_cell": cells.ACTIVE_CELL, "active_seconds": active,
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
    user_data, meta_data = seed.render_user_data(settings), seed.render_meta_data(settings)
    if engine == "container":

        spec = ContainerSpec(image=image, seed={"user-data": user_data, "meta-data": meta_data},
                             work=work / "container", console_log=logs / "loadtest-console.log",
                             machine="hubkiln-loadtest")
        with Container(spec) as box:
            yield ContainerMachine(box)
        return
    iso = nocloud.make_seed_iso(nocloud.write_seed_dir(work / "seed", user_data, meta_data),
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
        settings, credentials = launch_settings(students, nocloud.make_ssh_key(key, "loadtest"),
                                                schedule)
        plan_file, results = work / "plan.json", work / "results.json"
        with progress.stage("loadtest", f"{students} students on {path.name} ({engine})"), \
                proc.terminated_by_sigterm(), boot(engine, path, settings, key, work,
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
