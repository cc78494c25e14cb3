"""The class-start load client: simulated students of one hub, driven as a browser would.

Run by hubkiln/capacity/loadtest.py inside the network namespace of a container of the image
(`python -m hubkiln.capacity.client PLAN RESULTS`), it reads a plan (JSON: the hub's URL,
the roster with each student's enrolment code and arrival time, the admin's password,
the cells to run) and writes what it measured (JSON). Each student, at its arrival
time: the login form (username, password, enrolment code, _xsrf), the wait for the
server (the hub's progress stream, or polling its API), JupyterLab (the server's OAuth
login), a kernel, its websocket, a first cell that imports the course's packages, then
a cell every `cell_interval` seconds while it stays active, and the kernel's shutdown
(the server stays, idle). An admin asks the hub's API
every 2 s meanwhile, to see how the hub answers under load.

Bounded: every request and cell has a timeout, the whole run a deadline; a student
that fails stops at that step and the failure is recorded by kind. The TLS certificate
is not verified: at launch without a domain the hub's is self-signed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from hubkiln.capacity.cells import StepFailed, failure_kind

XSRF_FIELD = re.compile(r'name="_xsrf"\s+value="([^"]+)"')
#: Seconds one HTTP request may take (a login under load took up to 37 s in issue 14).
REQUEST_TIMEOUT = 120
#: Seconds a server may take to be ready (the image's own spawn timeout is 300 s).
SPAWN_TIMEOUT = 420
#: Seconds a cell may take (imports of a large course environment under load).
CELL_TIMEOUT = 300
#: Seconds a spawn may be neither pending nor running before it counts as failed.
SPAWN_LOST = 30
MONITOR_INTERVAL = 2.0
POLL_INTERVAL = 2.0
#: Seconds without another pre-started server before the class starts anyway (the hub
#: stops pre-starting when memory runs short).
PRESTART_STALL = 60


class Student:
    """One simulated student: a session with its own cookie jar."""

    def __init__(self, plan: dict[str, Any], student: dict[str, Any],
                 session: aiohttp.ClientSession, log):
        self.plan, self.name = plan, student["name"]
        self.password, self.code = student["password"], student.get("code", "")
        self.session, self.log = session, log
        self.steps: dict[str, float] = {}
        self.cells: list[float] = []
        self.failure: dict[str, str] | None = None
        self.step = "login"
        self.location = "/hub/"
        self.followed = ""  # how the spawn was followed: the progress stream or polling

    def cookie(self, name: str, path: str) -> str:
        found = self.session.cookie_jar.filter_cookies(URL(self.plan["base_url"] + path))
        morsel = found.get(name)
        return morsel.value if morsel else ""

    async def timed(self, step: str, work) -> Any:
        self.step = step
        started = time.monotonic()
        result = await work
        self.steps[step] = round(time.monotonic() - started, 3)
        return result

    async def run(self) -> dict[str, Any]:
        try:
            await self.timed("login", self.login())
            await self.timed("spawn", self.spawn())
            await self.timed("lab", self.open_lab())
            kernel = await self.timed("kernel", self.start_kernel())
            async with self.session.ws_connect(
                    f"/user/{self.name}/api/kernels/{kernel}/channels"
                    f"?session_id={os.urandom(8).hex()}",
                    headers={"X-XSRFToken": self.cookie("_xsrf", f"/user/{self.name}/")},
                    origin=self.plan["base_url"], heartbeat=30) as ws:
                await self.timed("first_cell", self.execute(ws, self.plan["first_cell"]))
                self.log(f"{self.name}: ready; first cell after {self.steps['first_cell']} s")
                await self.stay_active(ws)
            await self.timed("stop", self.stop_kernel(kernel))
        except asyncio.CancelledError:
            self.failure = {"step": self.step, "kind": "deadline", "detail": "run deadline"}
            raise
        except Exception as error:  # every failure is recorded by kind, none is fatal
            self.failure = {"step": self.step, "kind": failure_kind(error),
                            "detail": str(error)[:300]}
            self.log(f"{self.name}: {self.step} failed: {self.failure['kind']}")
        return self.record()

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "cells": self.cells,
                "spawn_followed": self.followed, "failure": self.failure}

    async def login(self) -> None:
        async with self.session.get("/hub/login") as response:
            page = await response.text()
            if response.status != 200:
                raise StepFailed(f"HTTP {response.status}", "login page")
        xsrf = XSRF_FIELD.search(page)
        if not xsrf:
            raise StepFailed("no _xsrf field", "the login form has no _xsrf field")
        form = {"_xsrf": xsrf.group(1), "username": self.name, "password": self.password,
                "otp": self.code}
        async with self.session.post("/hub/login", data=form,
                                     allow_redirects=False) as response:
            if response.status != 302:
                raise StepFailed(f"HTTP {response.status}", "login refused: "
                                 + (await response.text())[:200])
            self.location = response.headers.get("Location", "/hub/")

    async def spawn(self) -> None:
        """Follow the login's redirect (which starts the spawn), then wait until ready."""
        location = self.location if self.location.startswith("/") else "/hub/"
        async with self.session.get(location, max_redirects=20) as response:
            await response.read()
            if response.status >= 400:
                raise StepFailed(f"HTTP {response.status}", f"after login: {response.url}")
        api = {"X-XSRFToken": self.cookie("_xsrf", "/hub/")}
        deadline = time.monotonic() + SPAWN_TIMEOUT
        self.followed = "progress"
        if await self.follow_progress(api, deadline):
            return
        self.followed = "polling"
        lost_since = time.monotonic()
        while time.monotonic() < deadline:
            async with self.session.get(f"/hub/api/users/{self.name}",
                                        headers=api) as response:
                model = await response.json() if response.status == 200 else {}
            server = (model.get("servers") or {}).get("", {})
            if server.get("ready"):
                return
            if model.get("pending") or server:
                lost_since = time.monotonic()
            elif time.monotonic() - lost_since > SPAWN_LOST:
                raise StepFailed("spawn lost", "neither pending nor running")
            await asyncio.sleep(POLL_INTERVAL)
        raise StepFailed("timeout", f"not ready within {SPAWN_TIMEOUT} s")

    async def follow_progress(self, api: dict[str, str], deadline: float) -> bool:
        """The hub's progress stream, as the spawn-pending page reads it: True once the
        server is ready, False when the stream gives no answer (then poll)."""
        url = f"/hub/api/users/{self.name}/server/progress"
        timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
        async with self.session.get(url, headers=api, timeout=timeout) as response:
            if response.status != 200:
                return False
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("ready"):
                    return True
                if event.get("failed"):
                    raise StepFailed("spawn failed", str(event.get("message", ""))[:200])
        return False

    async def open_lab(self) -> None:
        """JupyterLab, through the server's OAuth login with the hub (sets its _xsrf)."""
        async with self.session.get(f"/user/{self.name}/lab", max_redirects=20) as response:
            await response.read()
            if response.status != 200:
                raise StepFailed(f"HTTP {response.status}", f"lab: {response.url}")

    async def start_kernel(self) -> str:
        headers = {"X-XSRFToken": self.cookie("_xsrf", f"/user/{self.name}/")}
        async with self.session.post(f"/user/{self.name}/api/kernels", json={},
                                     headers=headers) as response:
            if response.status != 201:
                raise StepFailed(f"HTTP {response.status}",
                                 "kernel: " + (await response.text())[:200])
            return (await response.json())["id"]

    async def stop_kernel(self, kernel: str) -> None:
        """Shut the kernel down, as closing the notebook does; the server stays (idle)."""
        headers = {"X-XSRFToken": self.cookie("_xsrf", f"/user/{self.name}/")}
        async with self.session.delete(f"/user/{self.name}/api/kernels/{kernel}",
                                       headers=headers) as response:
            if response.status != 204:
                raise StepFailed(f"HTTP {response.status}", "kernel shutdown")

    async def execute(self, ws: aiohttp.ClientWebSocketResponse, code: str) -> None:
        """Run `code` as a cell; wait for its reply and the kernel's idle status."""
        msg_id = os.urandom(8).hex()
        await ws.send_json({
            "header": {"msg_id": msg_id, "username": self.name, "session": msg_id,
                       "msg_type": "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}})
        replied = idle = False
        error = None
        async with asyncio.timeout(CELL_TIMEOUT):
            while not (replied and idle):
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.ERROR:
                    # The error is the message's data (ws.exception() may be unset).
                    broken = message.data or ws.exception()
                    raise StepFailed(f"websocket: {type(broken).__name__}", str(broken)[:300])
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.CLOSED):
                    raise StepFailed("websocket closed", f"code {ws.close_code}")
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                kind, content = data.get("msg_type"), data.get("content", {})
                if kind == "status" and content.get("execution_state") in ("dead",
                                                                           "restarting"):
                    raise StepFailed("kernel died", content["execution_state"])
                if data.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if kind == "error":
                    error = f"{content.get('ename')}: {content.get('evalue')}"
                elif kind == "execute_reply":
                    replied = True
                    if content.get("status") == "error" and error is None:
                        error = f"{content.get('ename')}: {content.get('evalue')}"
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
        if error:
            raise StepFailed(f"cell: {error.split(':', 1)[0]}", error[:300])

    async def stay_active(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        began = time.monotonic()
        self.step = "cell"
        for due in cell_times(self.plan["active_seconds"], self.plan["cell_interval"]):
            await asyncio.sleep(max(0.0, began + due - time.monotonic()))
            started = time.monotonic()
            await self.execute(ws, self.plan["active_cell"])
            self.cells.append(round(time.monotonic() - started, 3))
        await asyncio.sleep(max(0.0, began + self.plan["active_seconds"] - time.monotonic()))


def cell_times(active_seconds: float, interval: float) -> list[float]:
    """When, in seconds after the first cell, a student active for `active_seconds`
    runs its next cells: one every `interval`, the last no later than the end."""
    return [interval * n for n in range(1, int(active_seconds // interval) + 1)]


def new_session(plan: dict[str, Any]) -> aiohttp.ClientSession:
    """A browser-like session: its own cookie jar (unsafe: also for IP hosts), no
    certificate check, a timeout on every request."""
    return aiohttp.ClientSession(
        base_url=plan["base_url"], cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(ssl=False, limit=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


async def wait_for_login_page(plan: dict[str, Any], log) -> float:
    """Seconds until the hub serves its login page (bounded by hub_wait_seconds)."""
    started = time.monotonic()
    last = ""
    async with new_session(plan) as session:
        while time.monotonic() - started < plan["hub_wait_seconds"]:
            try:
                async with session.get("/hub/login", timeout=aiohttp.ClientTimeout(
                        total=30)) as response:
                    if response.status == 200:
                        return time.monotonic() - started
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                last = failure_kind(error)
            await asyncio.sleep(3)
    raise SystemExit(f"no login page within {plan['hub_wait_seconds']} s ({last})")


async def monitor(plan: dict[str, Any], samples: list[dict[str, Any]], log) -> None:
    """The admin, logged in, GETs /hub/api every MONITOR_INTERVAL s until cancelled."""
    admin = plan["admin"]
    async with new_session(plan) as session:
        probe = Student(plan, admin, session, log)
        try:
            await probe.login()
        except Exception as error:  # the monitor still measures /hub/api without a login
            log(f"monitor: the admin's login failed ({failure_kind(error)})")
        began = time.monotonic()
        while True:
            started = time.monotonic()
            sample: dict[str, Any] = {"t": round(started - began, 1)}
            try:
                async with session.get("/hub/api", timeout=aiohttp.ClientTimeout(
                        total=30)) as response:
                    await response.read()
                    if response.status != 200:
                        sample["error"] = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                sample["error"] = failure_kind(error)
            sample["seconds"] = round(time.monotonic() - started, 3)
            samples.append(sample)
            await asyncio.sleep(max(0.0, MONITOR_INTERVAL - (time.monotonic() - started)))


async def arrive(plan: dict[str, Any], student: dict[str, Any], began: float,
                 log) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, began + student["at"] - time.monotonic()))
    async with new_session(plan) as session:
        simulated = Student(plan, student, session, log)
        task = asyncio.ensure_future(simulated.run())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return simulated.record()


def ready_servers(users: list[dict[str, Any]], names: set[str]) -> int:
    """How many of `names` have their default server ready, in /hub/api/users (pure)."""
    return sum(1 for user in users if user.get("name") in names
               and ((user.get("servers") or {}).get("") or {}).get("ready"))


async def wait_for_prestart(plan: dict[str, Any], log) -> dict[str, Any]:
    """With a class_schedule, the hub pre-starts the roster's servers: as the admin,
    wait until every student's is ready (or the hub stops starting more: memory),
    bounded by prestart_wait_seconds. Returns what was seen."""
    names = {student["name"] for student in plan["students"]}
    started = time.monotonic()
    ready, last_change, last = 0, started, -1
    async with new_session(plan) as session:
        await Student(plan, plan["admin"], session, log).login()
        while time.monotonic() - started < plan["prestart_wait_seconds"]:
            async with session.get("/hub/api/users", params={"state": "active"},
                                   timeout=aiohttp.ClientTimeout(total=30)) as response:
                users = await response.json() if response.status == 200 else []
            ready = ready_servers(users, names)
            if ready != last:
                last, last_change = ready, time.monotonic()
                log(f"pre-start: {ready} of {len(names)} servers ready")
            if ready == len(names) or time.monotonic() - last_change > PRESTART_STALL:
                break
            await asyncio.sleep(POLL_INTERVAL)
    return {"ready": ready, "of": len(names),
            "seconds": round(time.monotonic() - started, 1)}


async def run_plan(plan: dict[str, Any], log=None) -> dict[str, Any]:
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    hub_wait = await wait_for_login_page(plan, log)
    log(f"the login page answered after {hub_wait:.0f} s; {len(plan['students'])} students")
    prestart = await wait_for_prestart(plan, log) if plan.get("prestart_wait_seconds") \
        else None
    samples: list[dict[str, Any]] = []
    watcher = asyncio.ensure_future(monitor(plan, samples, log))
    began_wall, began = time.time(), time.monotonic()
    tasks = [asyncio.ensure_future(arrive(plan, student, began, log))
             for student in plan["students"]]
    done, pending = await asyncio.wait(tasks, timeout=plan["deadline_seconds"])
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    students = []
    for student, result in zip(plan["students"], results, strict=True):
        if isinstance(result, asyncio.CancelledError):  # the deadline came before it did
            result = {"name": student["name"], "steps": {}, "cells": [],
                      "failure": {"step": "arrival", "kind": "deadline", "detail": ""}}
        elif isinstance(result, BaseException):
            result = {"name": student["name"], "steps": {}, "cells": [],
                      "failure": {"step": "?", "kind": failure_kind(result),
                                  "detail": str(result)[:300]}}
        students.append(result)
    return {"hub_wait_seconds": round(hub_wait, 1), "prestart": prestart,
            "started_at": began_wall,
            "seconds": round(time.monotonic() - began, 1), "deadline_hit": bool(pending),
            "students": students, "monitor": samples}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m hubkiln.capacity.client PLAN.json RESULTS.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    # A few connections per student: 500 students need more than the usual 1024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    results = asyncio.run(run_plan(plan))
    out = Path(argv[1])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
