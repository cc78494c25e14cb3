"""The capacity record of a class start: statistics per step, failures by kind, memory per student.

Pure functions over what the load client and the sampler reported: p50, p95 and
max of each step (login, spawn, lab, kernel, first cell, cells, stop), failures
counted by kind, the memory each student's server and kernel took (from their
cgroups, when the engine enforces them), and the one sizing line that goes into
the manifest and docs/benchmarks.md. `record_capacity` stores it beside the image.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from pathlib import Path
from typing import Any

from hubkiln.stages import artifacts

RECORD = "capacity.json"


#: A class whose servers a class_schedule pre-started: another figure, another file.
PRESTART_RECORD = "capacity-prestart.json"


STEPS = ("login", "spawn", "lab", "kernel", "first_cell", "cell", "stop")


MIB = 1 << 20


UNIT = re.compile(r"/jupyter-([a-z][a-z0-9_-]*)-singleuser\.service(?:/|$)")


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


#: The roles whose CPU a class start is broken down into, by the unit a process is in.
ROLE_UNITS = {"jupyterhub.service": "hub", "jupyterhub-proxy.service": "proxy",
              "hubkiln-front.service": "front"}
CPU_ROLES = ("hub", "proxy", "front", "servers", "kernels", "other")


def cpu_role(cgroup_text: str, kernel: bool) -> str:
    """The role of a process, from its /proc/PID/cgroup and whether it is a kernel (pure):
    a student's server or kernel, the hub (with what it runs: useradd, systemd-run),
    the proxy, the HTTPS front, or other (systemd, journald, sshd, the sampler)."""
    if student_unit(cgroup_text) is not None:
        return "kernels" if kernel else "servers"
    for line in cgroup_text.splitlines():
        if line.startswith("0::") or ":name=systemd:" in line:
            unit = line.rstrip("/").rsplit("/", 1)[-1]
            if unit in ROLE_UNITS:
                return ROLE_UNITS[unit]
    return "other"


def cpu_by_role(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds each role used between the first and the last sample of the class,
    and the machine's busy seconds meanwhile (pure). A process alive at the first sample
    counts from there, one that started later from zero; one that started and ended
    between two samples is not seen, and shows only in `unseen` (machine minus roles)."""
    during = [s for s in samples if "cpu" in s and not s.get("after")]
    if len(during) < 2:
        return {"measured": False, "why": "fewer than two samples of the class"}
    first = during[0]["cpu"]
    peak: dict[str, list[Any]] = {}
    for sample in during:
        for key, (role, seconds) in sample["cpu"].items():
            peak[key] = [role, max(seconds, peak.get(key, [role, 0.0])[1])]
    roles = dict.fromkeys(CPU_ROLES, 0.0)
    for key, (role, seconds) in peak.items():
        roles[role] += seconds - (first[key][1] if key in first else 0.0)
    machine = during[-1]["busy_seconds"] - during[0]["busy_seconds"]
    return {"measured": True, "seconds": round(during[-1]["t"] - during[0]["t"], 1),
            "cpu_seconds": {role: round(value, 1) for role, value in roles.items()},
            "machine_busy_seconds": round(machine, 1),
            "unseen_seconds": round(machine - sum(roles.values()), 1)}


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
                "load1_mean": round(statistics.mean(loads), 2) if loads else None,
                "by_role": cpu_by_role(samples)},
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
