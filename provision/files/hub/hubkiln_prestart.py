"""The class pre-start service: the roster's servers are running when a class starts.

jupyterhub_config.py registers it as the hub-managed service `class-prestart` when
the hub settings have a `class_schedule` and a roster (`service_config`). The hub
runs it as the system user hubkiln-prestart with its own API token, whose role
reads and starts only the roster's servers (`read:servers!user=NAME`,
`start:servers!user=NAME` for each): the hub refuses it every other name, and it
can stop, create or delete nothing. Every 30 s it asks hubkiln_schedule whether a
session's pre-start window is open; once per window it walks the roster in
order and starts (POST /hub/api/users/NAME/server) each server that is neither
running nor pending, 4 at a time, each followed until it is ready, and stops
early while MemAvailable (/proc/meminfo) is below `memory_reserve`. It logs one
line per window to the hub's journal. Servers nobody uses are stopped by the
idle culler (hubkiln_hub.prestart_culling_problem keeps its timeout long
enough for late students).

Roster users are in the hub's database from its start (JupyterHub.init_users
adds the allowed users, which are the roster and the admins); one that is not
(removed in the admin page) is skipped and named in the log: creating users
would need `admin:users`, far more than this service should hold.

Limits: the windows done are kept in memory, so a hub restart inside a window
(the hub restarts its services) walks the roster again, starting only servers
that are not running, those the culler stopped too. Memory is read before each
start, so the servers still starting (at most 4) can take it below the reserve.
A start makes the student's account and home (hubkiln-prepare-user), as a first
login would.

Command line (for the hub): python -m hubkiln_prestart; it reads the schedule and
roster from HUBKILN_PRESTART (JSON), the hub from JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from hubkiln_hub import with_schedule_defaults
from hubkiln_schedule import Window, describe, next_window, open_windows, schedule_zone
from hubkiln_schema import parse_size

SERVICE = "class-prestart"
SERVICE_USER = "hubkiln-prestart"
#: The service's settings, as jupyterhub_config.py hands them over.
CONFIG_ENV = "HUBKILN_PRESTART"
#: The least the service needs, each filtered to one roster user.
SCOPES = ("read:servers", "start:servers")
INTERVAL_SECONDS = 30
#: Servers started at once: a 2-core machine stays responsive for early logins.
CONCURRENCY = 4
#: How long a start is followed (jupyterhub_config.py's Spawner.start_timeout).
READY_TIMEOUT_SECONDS = 300
READY_POLL_SECONDS = 2
MEMINFO = Path("/proc/meminfo")


def service_config(settings: dict[str, Any], python: str) -> tuple[dict[str, Any],
                                                                 dict[str, Any]] | None:
    """The JupyterHub service and its role for the hub `settings`, or None when there
    is nothing to pre-start (no class_schedule, or no roster)."""
    schedule, roster = settings.get("class_schedule"), list(settings.get("users") or [])
    if not schedule or not roster:
        return None
    service = {
        "name": SERVICE,
        "user": SERVICE_USER,
        "cwd": "/",
        "command": [python, "-m", "hubkiln_prestart"],
        "environment": {CONFIG_ENV: json.dumps({
            "class_schedule": with_schedule_defaults(schedule), "users": roster})},
    }
    role = {
        "name": SERVICE,
        "scopes": [f"{scope}!user={name}" for name in roster for scope in SCOPES],
        "services": [SERVICE],
    }
    return service, role


# ------------------------------------------------------------ facts (pure parts)


def mem_available(meminfo: str) -> int:
    """MemAvailable of a /proc/meminfo text, in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no MemAvailable line in /proc/meminfo")


def read_mem_available() -> int:
    return mem_available(MEMINFO.read_text(encoding="ascii"))


def server_state(user: dict[str, Any] | None) -> str:
    """What the hub says of a user's default server: missing (no such user), running,
    pending (starting or stopping) or stopped."""
    if user is None:
        return "missing"
    server = (user.get("servers") or {}).get("")
    if not server:
        return "stopped"
    if server.get("pending"):
        return "pending"
    return "running" if server.get("ready") or not server.get("stopped") else "stopped"


@dataclass
class Report:
    """What one pass over the roster did."""

    started: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: MemAvailable when the pass stopped for memory, and the names it did not reach.
    low_memory: int | None = None
    not_reached: list[str] = field(default_factory=list)


def report_line(window: Window, report: Report, zone: tzinfo, reserve: int) -> str:
    """The one log line of a window."""
    parts = [f"pre-start for {describe(window, zone)}: started {len(report.started)}",
             f"skipped {len(report.running)} (running)"]
    if report.missing:
        names = ", ".join(report.missing[:5]) + (" ..." if len(report.missing) > 5 else "")
        parts.append(f"skipped {len(report.missing)} not in the hub's database ({names})")
    if report.failed:
        first = next(iter(report.failed.items()))
        parts.append(f"failed {len(report.failed)} ({first[0]}: {first[1]})")
    if report.low_memory is not None:
        parts.append(f"stopped for memory before {len(report.not_reached)} more "
                     f"(MemAvailable {report.low_memory >> 20} MiB < memory_reserve "
                     f"{reserve >> 20} MiB)")
    return ", ".join(parts)


# ------------------------------------------------------------ the hub (thin)


class HubAPI:
    """The two calls of the hub's REST API the service makes, with its token."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, token: str):
        self.session, self.api_url = session, api_url.rstrip("/")
        self.headers = {"Authorization": f"token {token}"}

    def _url(self, name: str, suffix: str = "") -> str:
        return f"{self.api_url}/users/{quote(name, safe='')}{suffix}"

    async def user(self, name: str) -> dict[str, Any] | None:
        """The user's model (with `servers`), or None when the hub has no such user."""
        async with self.session.get(self._url(name), headers=self.headers) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            return await response.json()

    async def start(self, name: str) -> tuple[int, str]:
        """Ask the hub to start the user's server: (HTTP status, body)."""
        async with self.session.post(self._url(name, "/server"),
                                     headers=self.headers) as response:
            return response.status, (await response.text())[:200]


async def start_server(hub: HubAPI, name: str, *, timeout: float = READY_TIMEOUT_SECONDS,
                       poll: float = READY_POLL_SECONDS) -> str:
    """Start one server and follow it until it is ready: 'started', 'running' (it was
    already, e.g. its student logged in first) or why it failed."""
    status, body = await hub.start(name)
    if status == 400 and ("already running" in body or "pending" in body):
        return "running"
    if status not in (201, 202):
        return f"HTTP {status} {' '.join(body.split())[:80]}".strip()
    deadline = time.monotonic() + timeout
    while status == 202:
        state = server_state(await hub.user(name))
        if state == "running":
            return "started"
        if state != "pending":
            return f"{state} while starting (see the hub's journal)"
        if time.monotonic() > deadline:
            return f"not ready after {timeout:.0f} s"
        await asyncio.sleep(poll)
    return "started"


async def prestart(hub: HubAPI, roster: list[str], *, reserve: int,
                   memory: Callable[[], int] = read_mem_available,
                   concurrency: int = CONCURRENCY,
                   start: Callable[[HubAPI, str], Awaitable[str]] = start_server) -> Report:
    """One pass: start the stopped servers of `roster`, in its order, `concurrency` at a
    time, until MemAvailable (`memory()`) falls below `reserve`."""
    report = Report()
    queue = deque(roster)

    async def worker() -> None:
        while queue and report.low_memory is None:
            name = queue.popleft()
            try:
                state = server_state(await hub.user(name))
                if state == "missing":
                    report.missing.append(name)
                    continue
                if state in ("running", "pending"):
                    report.running.append(name)
                    continue
                if report.low_memory is not None:  # another worker stopped meanwhile
                    report.not_reached.append(name)
                    return
                available = memory()
                if available < reserve:
                    report.low_memory = available
                    report.not_reached.append(name)
                    return
                outcome = await start(hub, name)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                outcome = f"{type(error).__name__}: {error}"[:120]
            if outcome == "started":
                report.started.append(name)
            elif outcome == "running":
                report.running.append(name)
            else:
                report.failed[name] = outcome

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    report.not_reached.extend(queue)
    return report


class Prestarter:
    """The service's state: which windows were done; `tick` is one look at the clock."""

    def __init__(self, schedule: dict[str, Any], roster: list[str], hub: HubAPI, *,
                 zone: tzinfo, memory: Callable[[], int] = read_mem_available,
                 log: Callable[[str], None] = print,
                 start: Callable[[HubAPI, str], Awaitable[str]] = start_server):
        self.schedule, self.roster, self.hub, self.zone = schedule, roster, hub, zone
        self.reserve = parse_size(schedule["memory_reserve"])
        self.memory, self.log, self.start = memory, log, start
        self.done: set[Window] = set()
        self.announced: Window | None = None

    async def tick(self, now: datetime) -> Report | None:
        """Pre-start for the windows open at `now` not done yet; the report, or None."""
        current = open_windows(self.schedule, now, self.zone)
        self.done &= set(current)  # forget the windows that closed
        todo = [window for window in current if window not in self.done]
        report = None
        if todo:
            report = await prestart(self.hub, self.roster, reserve=self.reserve,
                                    memory=self.memory, start=self.start)
            self.done |= set(todo)
            self.log(report_line(todo[0], report, self.zone, self.reserve))
        upcoming = next_window(self.schedule, now, self.zone)
        if upcoming and upcoming != self.announced:
            opens = upcoming.opens.astimezone(self.zone).strftime("%a %Y-%m-%d %H:%M %Z")
            self.log(f"next pre-start: {opens}, for {describe(upcoming, self.zone)}")
            self.announced = upcoming
        return report


def log(message: str) -> None:
    print(f"{SERVICE}: {message}", flush=True)


async def serve(config: dict[str, Any], api_url: str, token: str, *,
                memory: Callable[[], int] = read_mem_available) -> None:
    """Look at the clock every INTERVAL_SECONDS, pre-starting in each window; forever."""
    schedule, roster = config["class_schedule"], config["users"]
    zone = schedule_zone(schedule)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        prestarter = Prestarter(schedule, roster, HubAPI(session, api_url, token),
                                zone=zone, memory=memory, log=log)
        log(f"{len(roster)} roster user(s), {len(schedule['sessions'])} session(s) a week "
            f"in {schedule['timezone'] or 'the machine zone'}, "
            f"{schedule['prestart_minutes']} minutes ahead")
        while True:
            try:
                await prestarter.tick(datetime.now(UTC))
            except Exception as error:  # the next tick tries again
                log(f"error: {type(error).__name__}: {error}")
            await asyncio.sleep(INTERVAL_SECONDS)


def main() -> int:
    try:
        config = json.loads(os.environ[CONFIG_ENV])
        api_url, token = os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]
    except (KeyError, ValueError) as error:
        print(f"{SERVICE}: started without its settings ({error}); run by the hub only",
              file=sys.stderr)
        return 2
    asyncio.run(serve(config, api_url, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
