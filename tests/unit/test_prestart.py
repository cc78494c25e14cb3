"""The class pre-start service (hubkiln_prestart) against a small fake of the hub's API.

The fake hub enforces the service's role as JupyterHub would: it answers only for
the names that `service_config`'s scopes allow (403 otherwise), like a token with
`read:servers!user=NAME` and `start:servers!user=NAME`. Starts take a moment, some
finish within the POST (201), some after it (202, then pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from hubkiln.config.guest import load_module
from hubkiln.config.profile import parse_size

HUB = Path(__file__).resolve().parents[2] / "provision" / "files" / "hub"
# As in the image: the service imports the settings and schedule modules beside it.
settings_rules = load_module("hubkiln_hub", HUB / "hubkiln_hub.py")
load_module("hubkiln_schedule", HUB / "hubkiln_schedule.py")
prestart = load_module("hubkiln_prestart", HUB / "hubkiln_prestart.py")

TOKEN = "service-token"
BERLIN = ZoneInfo("Europe/Berlin")
GiB = 1 << 30
SCHEDULE = settings_rules.with_schedule_defaults({
    "timezone": "Europe/Berlin",
    "sessions": [{"days": ["mon"], "start": "09:00", "minutes": 90}]})
ROSTER = [f"s{i:02d}" for i in range(10)]
SETTINGS = {**settings_rules.DEFAULTS, "users": ROSTER, "admins": ["teacher"],
            "class_schedule": SCHEDULE}


class FakeHub:
    """Users and their default servers, the calls made, and the most starts at once."""

    def __init__(self, allowed: set[str], users: dict[str, str], *, slow: set[str] = (),
                 broken: set[str] = ()):
        self.allowed, self.users = allowed, users  # name -> running/stopped/pending
        self.slow, self.broken = set(slow), set(broken)
        self.started: list[str] = []
        self.starting = self.most_at_once = 0

    def model(self, name: str) -> dict:
        state = self.users[name]
        servers = {} if state == "stopped" else {"": {
            "name": "", "ready": state == "running", "stopped": False,
            "pending": "spawn" if state == "pending" else None}}
        return {"kind": "user", "name": name, "servers": servers}

    def app(self) -> web.Application:
        routes = web.RouteTableDef()

        def guard(request) -> str:
            assert request.headers["Authorization"] == f"token {TOKEN}"
            name = request.match_info["name"]
            if name not in self.allowed:
                raise web.HTTPForbidden(text="scope filter")
            if name not in self.users:
                raise web.HTTPNotFound()
            return name

        @routes.get("/hub/api/users/{name}")
        async def user(request):
            return web.json_response(self.model(guard(request)))

        @routes.post("/hub/api/users/{name}/server")
        async def start(request):
            name = guard(request)
            if self.users[name] != "stopped":
                return web.Response(status=400, text=f"{name} is already running")
            self.started.append(name)
            self.starting += 1
            self.most_at_once = max(self.most_at_once, self.starting)
            self.users[name] = "pending"
            if name in self.slow or name in self.broken:
                asyncio.get_running_loop().call_later(0.05, self.finish, name)
                return web.Response(status=202)
            await asyncio.sleep(0.02)
            self.finish(name)
            return web.Response(status=201)

        app = web.Application()
        app.add_routes(routes)
        return app

    def finish(self, name: str) -> None:
        self.starting -= 1
        self.users[name] = "stopped" if name in self.broken else "running"


def allowed_by_role(role: dict) -> set[str]:
    """The names a token with the role's scopes may read and start servers of."""
    names = {}
    for scope in role["scopes"]:
        what, _, name = scope.partition("!user=")
        names.setdefault(what, set()).add(name)
    return names["read:servers"] & names["start:servers"]


def against(hub: FakeHub, action):
    """Run `action(api)` against the fake hub, with quick polling of pending starts."""
    async def main():
        runner = web.AppRunner(hub.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hub/api/"
        try:
            async with aiohttp.ClientSession() as session:
                return await action(prestart.HubAPI(session, url, TOKEN))
        finally:
            await runner.cleanup()
    return asyncio.run(main())


quick_start = functools.partial(prestart.start_server, poll=0.01, timeout=5)


def one_pass(hub: FakeHub, roster=ROSTER, memory=lambda: 8 * GiB,
             concurrency=prestart.CONCURRENCY):
    return against(hub, lambda api: prestart.prestart(api, roster, reserve=GiB, memory=memory,
                                                      concurrency=concurrency,
                                                      start=quick_start))


def roster_hub(**states) -> FakeHub:
    _, role = prestart.service_config(SETTINGS, "/opt/hubkiln/hub/bin/python")
    users = {name: "stopped" for name in ROSTER} | {"teacher": "stopped", "outsider": "stopped"}
    return FakeHub(allowed_by_role(role), users | states)


# ------------------------------------------------------------ the hub service and its role


def test_the_service_runs_unprivileged_with_the_roster_and_schedule():
    service, role = prestart.service_config(SETTINGS, "/opt/hubkiln/hub/bin/python")
    assert service["name"] == role["services"][0] == "class-prestart"
    assert service["user"] == "hubkiln-prestart" and "admin" not in service
    assert settings_rules.reserved_name_problem(service["user"])  # never a student's name
    assert service["command"] == ["/opt/hubkiln/hub/bin/python", "-m", "hubkiln_prestart"]
    handed = json.loads(service["environment"][prestart.CONFIG_ENV])
    assert handed == {"class_schedule": SCHEDULE, "users": ROSTER}


def test_the_role_reads_and_starts_the_rosters_servers_only():
    _, role = prestart.service_config(SETTINGS, "python")
    assert allowed_by_role(role) == set(ROSTER)  # not the admin, nobody else
    assert {scope.partition("!")[0] for scope in role["scopes"]} == {"read:servers",
                                                                      "start:servers"}


@pytest.mark.parametrize("changes", [{"class_schedule": None}, {"users": []}])
def test_no_service_without_a_schedule_or_a_roster(changes):
    assert prestart.service_config({**SETTINGS, **changes}, "python") is None


def test_the_scopes_exist_in_this_jupyterhub():
    from jupyterhub.scopes import _check_scopes_exist

    _check_scopes_exist(prestart.service_config(SETTINGS, "python")[1]["scopes"])


def test_the_schedule_gets_its_defaults():
    bare = {"sessions": [{"days": ["fri"], "start": "10:30", "minutes": 45}]}
    service, _ = prestart.service_config({**SETTINGS, "class_schedule": bare}, "python")
    handed = json.loads(service["environment"][prestart.CONFIG_ENV])["class_schedule"]
    assert handed == {"timezone": None, "prestart_minutes": 10, "memory_reserve": "1G", **bare}


# ------------------------------------------------------------ one pass over the roster


def test_a_pass_starts_the_stopped_servers_a_few_at_a_time():
    hub = roster_hub(s01="running", s02="pending")
    hub.slow = {"s05", "s07"}  # ready only after the POST: followed until then
    report = one_pass(hub)
    assert sorted(hub.started) == sorted(report.started) == [
        n for n in ROSTER if n not in ("s01", "s02")]
    assert sorted(report.running) == ["s01", "s02"] and not report.failed
    assert 2 <= hub.most_at_once <= prestart.CONCURRENCY
    assert all(hub.users[name] == "running" for name in hub.started)
    assert hub.users["teacher"] == hub.users["outsider"] == "stopped"


def test_a_pass_goes_in_roster_order():
    hub = roster_hub(s01="running")
    hub.slow = {"s03"}
    one_pass(hub, concurrency=1)
    assert hub.started == [n for n in ROSTER if n != "s01"]


def test_a_pass_stops_below_the_memory_reserve():
    readings = iter([4 * GiB, 3 * GiB, GiB // 2] + [8 * GiB] * 20)
    hub = roster_hub()
    report = one_pass(hub, memory=lambda: next(readings))
    assert len(hub.started) == 2 and report.low_memory == GiB // 2
    assert len(report.not_reached) == len(ROSTER) - 2
    assert set(report.not_reached) | set(report.started) == set(ROSTER)


def test_a_missing_user_is_skipped_and_a_failed_start_is_named():
    hub = roster_hub()
    del hub.users["s03"]
    hub.broken = {"s04"}
    report = one_pass(hub)
    assert report.missing == ["s03"] and list(report.failed) == ["s04"]
    assert "stopped while starting" in report.failed["s04"]
    assert len(report.started) == len(ROSTER) - 2


def test_a_name_the_role_does_not_allow_fails_at_the_hub():
    report = one_pass(roster_hub(), roster=["outsider"])
    assert report.failed and "403" in report.failed["outsider"]
    assert report.started == []


# ------------------------------------------------------------ the service over time


def test_each_window_is_done_once_and_logged_in_one_line():
    hub, lines = roster_hub(), []

    async def ticks(api):
        service = prestart.Prestarter(SCHEDULE, ROSTER, api, zone=BERLIN,
                                      memory=lambda: 8 * GiB, log=lines.append,
                                      start=quick_start)
        moments = ["2025-03-24 08:00", "2025-03-24 08:50", "2025-03-24 09:20",
                   "2025-03-24 10:40", "2025-03-31 08:55"]
        return [await service.tick(datetime.fromisoformat(m).replace(tzinfo=BERLIN))
                for m in moments]

    reports = against(hub, ticks)
    assert [r is not None for r in reports] == [False, True, False, False, True]
    assert len(reports[1].started) == len(ROSTER)
    assert reports[4].running == ROSTER  # a week later, the servers still run
    passes = [line for line in lines if line.startswith("pre-start for")]
    assert passes[0] == ("pre-start for the class of Mon 2025-03-24 09:00-10:30 (CET): "
                         "started 10, skipped 0 (running)")
    assert "skipped 10 (running)" in passes[1] and "(CEST)" in passes[1]
    assert lines[0].startswith("next pre-start: Mon 2025-03-24 08:50 CET")


def test_the_log_line_says_why_it_stopped():
    window = prestart.open_windows(SCHEDULE, datetime(2025, 3, 24, 8, tzinfo=UTC), BERLIN)[0]
    report = prestart.Report(started=["a"], running=["b", "c"], missing=["d"],
                             failed={"e": "HTTP 429 too many"}, low_memory=512 << 20,
                             not_reached=["f", "g"])
    line = prestart.report_line(window, report, BERLIN, GiB)
    assert line.endswith("started 1, skipped 2 (running), skipped 1 not in the hub's database "
                         "(d), failed 1 (e: HTTP 429 too many), stopped for memory before 2 "
                         "more (MemAvailable 512 MiB < memory_reserve 1024 MiB)")


def test_the_service_pre_starts_from_its_environment(capsys):
    """serve(), as `python -m hubkiln_prestart` runs it, in a class that is on now."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    schedule = settings_rules.with_schedule_defaults({"timezone": "UTC", "sessions": [
        {"days": list(settings_rules.DAYS), "start": now.strftime("%H:%M"), "minutes": 60}]})
    service, _ = prestart.service_config({**SETTINGS, "class_schedule": schedule}, "python")
    config = json.loads(service["environment"][prestart.CONFIG_ENV])
    hub = roster_hub()

    async def for_a_moment(api):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(prestart.serve(config, api.api_url, TOKEN,
                                                  memory=lambda: 8 * GiB), timeout=1.5)

    against(hub, for_a_moment)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("class-prestart: 10 roster user(s), 1 session(s) a week in UTC, "
                      "10 minutes ahead")
    assert any(line.startswith("class-prestart: pre-start for the class of")
               and "started 10, skipped 0 (running)" in line for line in out), out
    assert sorted(hub.started) == ROSTER


# ------------------------------------------------------------ facts


def test_mem_available_reads_meminfo():
    text = "MemTotal:        4025032 kB\nMemFree:  100 kB\nMemAvailable:    2097152 kB\n"
    assert prestart.mem_available(text) == 2 * GiB
    with pytest.raises(ValueError):
        prestart.mem_available("MemTotal: 1 kB\n")


@pytest.mark.parametrize("size", ["1G", "512M", "1.5G", "64K", "1T"])
def test_sizes_read_as_the_build_reads_them(size):
    assert prestart.parse_size(size) == parse_size(size)


@pytest.mark.parametrize(("model", "state"), [
    (None, "missing"),
    ({"name": "a", "servers": {}}, "stopped"),
    ({"name": "a", "servers": {"": {"ready": True, "pending": None}}}, "running"),
    ({"name": "a", "servers": {"": {"ready": False, "pending": "spawn"}}}, "pending"),
    ({"name": "a", "servers": {"": {"ready": False, "pending": "stop"}}}, "pending"),
    ({"name": "a", "servers": {"lab2": {"ready": True}}}, "stopped"),  # named servers apart
])
def test_server_state(model, state):
    assert prestart.server_state(model) == state


def test_without_its_settings_it_says_so(monkeypatch, capsys):
    monkeypatch.delenv(prestart.CONFIG_ENV, raising=False)
    assert prestart.main() == 2
    assert "run by the hub only" in capsys.readouterr().err
