"""Where a boot's time went: the guest's `systemd-analyze` output, parsed (pure).

The validation boots the image under qemu, times qemu start to the hub's first answered
login page, and asks the guest for `systemd-analyze time`, `systemd-analyze blame` and
`systemd-analyze critical-chain jupyterhub.service`. These functions turn that text
into the validation record's `boot` entry (docs/benchmarks.md reads it).
"""

from __future__ import annotations

import re
from typing import Any

#: The guest's commands (each may fail while the boot is not over: the text then says so).
COMMANDS = {
    "time": "systemd-analyze time",
    "blame": "systemd-analyze blame --no-pager",
    "critical_chain": "systemd-analyze critical-chain --no-pager jupyterhub.service",
}
UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(µs|us|ms|min|s|h)\b")
CHAIN_LINE = re.compile(r"^[\s│├└─]*([\w@.\\:-]+\.\w+)\s+@(.+?)(?:\s+\+(.+))?$")
BLAME_TOP = 12


def seconds(span: str) -> float:
    """`1min 2.5s`, `345ms`, `1h 2min` -> seconds (pure). Raises ValueError on no span."""
    parts = SPAN.findall(span)
    if not parts:
        raise ValueError(f"not a systemd time span: {span!r}")
    return round(sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts), 3)


def parse_time(text: str) -> dict[str, float]:
    """`Startup finished in 2.1s (kernel) + 40.2s (userspace) = 42.3s` -> each part."""
    found: dict[str, float] = {}
    first = text.strip().splitlines()[0] if text.strip() else ""
    if not first.startswith("Startup finished in "):
        return found
    head, _, total = first.removeprefix("Startup finished in ").rpartition("=")
    for part in head.split("+"):
        match = re.match(r"\s*(.+?)\s*\((\w+)\)\s*$", part)
        if match:
            found[match.group(2)] = seconds(match.group(1))
    found["total"] = seconds(total)
    return found


def parse_blame(text: str, top: int = BLAME_TOP) -> list[dict[str, Any]]:
    """The `top` slowest units of `systemd-analyze blame`, slowest first."""
    units = []
    for line in text.splitlines():
        span, _, unit = line.strip().rpartition(" ")
        try:
            units.append({"unit": unit, "seconds": seconds(span)})
        except ValueError:
            continue
    return sorted(units, key=lambda u: -u["seconds"])[:top]


def parse_critical_chain(text: str) -> list[dict[str, Any]]:
    """`systemd-analyze critical-chain UNIT`, target first: each unit, when it was
    active (`at`, seconds after the kernel started userspace) and how long it took
    to start (`took`, absent for units that start at once)."""
    chain = []
    for line in text.splitlines():
        match = CHAIN_LINE.match(line.rstrip())
        if not match:
            continue
        unit, at, took = match.groups()
        entry: dict[str, Any] = {"unit": unit, "at": seconds(at)}
        if took:
            entry["took"] = seconds(took)
        chain.append(entry)
    return chain


def boot_record(outputs: dict[str, str], *, to_ssh: float,
                to_login: float | None) -> dict[str, Any]:
    """The validation record's `boot` entry from the commands' outputs (pure)."""
    return {
        "to_ssh_seconds": round(to_ssh, 1),
        "to_login_page_seconds": round(to_login, 1) if to_login is not None else None,
        "systemd": parse_time(outputs.get("time", "")),
        "slowest_units": parse_blame(outputs.get("blame", "")),
        "critical_chain": parse_critical_chain(outputs.get("critical_chain", "")),
    }
