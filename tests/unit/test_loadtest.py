"""The class-start benchmark's pure parts, and its client against a fake hub."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from aiohttp import web

from hubkiln.capacity import cells, loadtest, machines, record
from hubkiln.capacity import client as loadclient
from hubkiln.errors import BuildError


def test_percentiles_use_the_nearest_rank():
    values = [float(v) for v in range(1, 21)]  # 1 .. 20
    assert record.percentiles(values) == {"count": 20, "p50": 10.0, "p95": 19.0,
                                            "max": 20.0}


def test_percentiles_of_one_value_and_of_none():
    assert record.percentiles([3.2]) == {"count": 1, "p50": 3.2, "p95": 3.2, "max": 3.2}
    assert record.percentiles([])["p95"] is None


def test_arrivals_spread_evenly_over_the_ramp_the_first_at_once():
    assert loadtest.arrival_schedule(4, 60) == [0.0, 15.0, 30.0, 45.0]
    assert loadtest.arrival_schedule(1, 60) == [0.0]
    assert loadtest.arrival_schedule(3, 0) == [0.0, 0.0, 0.0]


def test_the_roster_is_numbered_from_one():
    assert loadtest.roster(3) == ["student001", "student002", "student003"]
    assert loadtest.roster(500)[-1] == "student500"


@pytest.mark.parametrize(("students", "ramp", "active", "engine", "message"), [
    (0, 60, 120, "container", "--students 0"),
    (501, 60, 120, "container", "--students 501"),
    (10, -1, 120, "container", "--ramp -1"),
    (10, 60, 4000, "container", "--active 4000"),
    (10, 60, 120, "docker", "--engine 'docker'"),
])
def test_bad_arguments_are_refused_by_name(students, ramp, active, engine, message):
    with pytest.raises(BuildError, match=message):
        loadtest.check_arguments(students, ramp, active, engine)


def test_good_arguments_pass():
    loadtest.check_arguments(500, 0, 0, "container")
    loadtest.check_arguments(1, 3600, 3600, "vm")


def test_the_first_cell_imports_the_course_packages():
    """In a fresh interpreter (this one has imported them already); the venv has both."""
    cell = cells.first_cell("no-such-profile", ["PyYAML>=6", "rich"])
    check = "import sys\nprint(sorted({'yaml', 'rich'} & set(sys.modules)))"
    ran = subprocess.run([sys.executable, "-c", cell + check], capture_output=True, text=True,
                         timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['rich', 'yaml']"


def test_the_first_cell_fails_on_a_missing_course_package():
    with pytest.raises(ModuleNotFoundError, match="no_such_course_package"):
        exec(cells.first_cell("x", ["no-such-course-package==1.0"]), {})


def test_profiles_with_a_workload_get_it():
    assert "pulp.LpProblem" in cells.first_cell("optimization", ["pulp==3.3.2"])
    assert "networkx" in cells.first_cell("ci", ["networkx"])


def test_a_process_is_assigned_to_its_students_unit():
    cgroup = ("1:name=systemd:/hubkiln-students.slice/jupyter-student007-singleuser.service\n"
              "0::/hubkiln-students.slice/jupyter-student007-singleuser.service\n")
    assert record.student_unit(cgroup) == "student007"
    assert record.student_unit("0::/system.slice/jupyterhub.service\n") is None


def test_processes_are_summed_per_student_unit():
    prefix = "0::/hubkiln-students.slice/jupyter-"
    processes = [[f"{prefix}student001-singleuser.service\n", 100, False],
                 [f"{prefix}student001-singleuser.service\n", 50, True],
                 [f"{prefix}student002-singleuser.service\n", 70, False],
                 ["0::/system.slice/hubkiln-other-singleuser.service.d\n", 999, True]]
    assert machines.units_of(processes) == {"student001": {"pss": 150, "kernel": True},
                                            "student002": {"pss": 70, "kernel": False}}


def test_the_sampling_script_runs_and_its_output_parses():
    """Here, on the build host, in a PID namespace of its own (a container of an image
    may be running on this host, and its students' processes are in the host's /proc):
    no student units, and maybe no systemd to ask."""
    ran = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          machines.SAMPLE_SCRIPT], capture_output=True, text=True, timeout=60,
                         check=False)
    assert ran.returncode == 0, ran.stderr
    sample = machines.parse_sample(ran.stdout)
    assert sample["units"] == {}
    assert sample["cpus"] >= 1 and 0 < sample["mem_available"] <= sample["mem_total"]
    # It sees itself (pid 1 of the namespace), as a process of no hub role.
    assert [role for key, (role, _) in sample["cpu"].items() if key.startswith("1:")] == [
        "other"]
    assert sample["busy_seconds"] > 0


def test_each_process_gets_its_role_from_its_unit():
    student = "1:name=systemd:/hubkiln-students.slice/jupyter-ada-singleuser.service\n"
    assert record.cpu_role(student, kernel=False) == "servers"
    assert record.cpu_role(student, kernel=True) == "kernels"
    assert record.cpu_role("0::/system.slice/jupyterhub.service\n", False) == "hub"
    assert record.cpu_role("1:name=systemd:/system.slice/jupyterhub-proxy.service\n"
                           "0::/system.slice/jupyterhub-proxy.service\n", False) == "proxy"
    assert record.cpu_role("0::/system.slice/hubkiln-front.service\n", False) == "front"
    # A unit whose name only contains a role's is not that role.
    assert record.cpu_role("0::/system.slice/not-jupyterhub.service\n", False) == "other"
    assert record.cpu_role("0::/init.scope\n", False) == "other"


def test_cpu_by_role_counts_from_the_first_sample_and_new_processes_from_zero():
    def sample(t, busy, cpu, after=False):
        return {"t": t, "busy_seconds": busy, "cpu": cpu, **({"after": True} if after else {})}

    samples = [
        sample(0, 100.0, {"10:5": ["hub", 40.0], "11:6": ["servers", 1.0]}),
        sample(5, 108.0, {"10:5": ["hub", 42.0], "11:6": ["servers", 2.5],
                          "12:7": ["kernels", 3.0]}),
        # pid 11 ended; pid 12 reused by another process (another start time).
        sample(10, 116.0, {"10:5": ["hub", 43.0], "12:7": ["kernels", 4.0],
                           "12:9": ["kernels", 1.0]}),
        sample(15, 200.0, {"10:5": ["hub", 90.0]}, after=True),
    ]
    found = record.cpu_by_role(samples)
    assert found["measured"] and found["seconds"] == 10
    assert found["cpu_seconds"] == {"hub": 3.0, "proxy": 0.0, "front": 0.0,
                                    "servers": 1.5, "kernels": 5.0, "other": 0.0}
    assert found["machine_busy_seconds"] == 16.0 and found["unseen_seconds"] == 6.5
    assert record.cpu_by_role(samples[:1])["measured"] is False


class FakeVm:
    class spec:  # noqa: N801 (a stand-in for VmSpec)
        forwards = {22: 2222, 443: 4443}
        accelerator = "tcg"

    def __init__(self):
        self.commands = []

    def ssh(self, user, key, command, *, timeout, check):
        self.commands.append((user, command))
        return subprocess.CompletedProcess([], 0, "", "")


def test_the_vm_is_reached_on_its_forwarded_port_and_read_as_the_admins_ssh_account():
    vm = FakeVm()
    machine = loadtest.VmMachine(vm, None)
    assert machine.base_url == "https://localhost:4443"
    assert machine.client(["python", "-m", "hubkiln.capacity.client"]) == [
        "python", "-m", "hubkiln.capacity.client"]
    machine.guest(["systemctl", "show", "-p", "Id", "jupyter-*-singleuser.service"])
    assert vm.commands == [(loadtest.OPERATOR, "sudo -n systemctl show -p Id "
                                               "'jupyter-*-singleuser.service'")]
    assert loadtest.OPERATOR != loadtest.ADMIN  # the SSH account, not the hub account


def test_the_container_client_runs_in_its_network_namespace():
    class Box:
        leader = 4242

        def in_netns(self, argv):
            return ["nsenter", "-t", str(self.leader), "-n", "--", *argv]

    machine = loadtest.ContainerMachine(Box())
    assert machine.base_url == "https://localhost"
    assert machine.client(["python"])[:5] == ["nsenter", "-t", "4242", "-n", "--"]


def test_memory_current_is_parsed_and_not_set_is_none():
    text = ("MemoryCurrent=[not set]\nId=hubkiln-students.slice\n\n"
            "Id=jupyter-student001-singleuser.service\nMemoryCurrent=1048576\n")
    assert record.parse_memory_current(text) == {
        "hubkiln-students.slice": None, "jupyter-student001-singleuser.service": 1048576}


def unit(pss_mib: int, kernel: bool) -> dict:
    return {"pss": pss_mib * record.MIB, "kernel": kernel}


def test_memory_per_student_is_the_peak_active_and_the_idle_after_the_class():
    samples = [
        {"units": {"a": unit(40, False)}},  # still starting: not counted as idle
        {"units": {"a": unit(150, True), "b": unit(170, True)}},
        {"units": {"a": unit(160, True), "b": unit(150, True)}},
        {"after": True, "units": {"a": unit(100, False), "b": unit(110, False)}},
    ]
    memory = record.memory_per_student(samples)
    assert memory["active"] == {"students": 2, "median_mib": 165.0, "max_mib": 170.0}
    assert memory["idle"] == {"students": 2, "median_mib": 105.0, "max_mib": 110.0}


def test_cgroup_memory_says_when_it_is_not_measurable():
    unset = [{"cgroup": {"hubkiln-students.slice": None}}]
    assert "not measurable in this container" in record.cgroup_memory(unset, "container")
    assert record.cgroup_memory([{"cgroup": {"hubkiln-students.slice": 3 * record.MIB}}],
                                  "vm (kvm)") == {"students_slice_peak_mib": 3.0}


def client_result(name: str, spawn: float | None, failure: dict | None = None) -> dict:
    steps = {"login": 1.0, "spawn": spawn, "lab": 0.3, "kernel": 0.1, "first_cell": 0.5,
             "stop": 0.1} if spawn else {"login": 2.0}
    return {"name": name, "steps": steps, "cells": [0.05] if spawn else [],
            "failure": failure}


def test_the_record_counts_failures_by_kind_and_the_sizing_line_says_what_was_measured():
    client = {"hub_wait_seconds": 6.0, "students": [
        client_result("student001", 8.0), client_result("student002", 12.0),
        client_result("student003", None, {"step": "spawn", "kind": "timeout",
                                           "detail": "not ready"})],
        "monitor": [{"t": 0, "seconds": 0.02}, {"t": 2, "seconds": 30.0, "error": "timeout"}]}
    machine = {"cpus": 2, "mem_total": 24 << 30, "cgroup": {}}
    samples = [{**machine, "load1": 2.5, "mem_available": 20 << 30,
                "units": {"student001": unit(150, True)}},
               {**machine, "after": True, "load1": 3.5, "mem_available": 19 << 30,
                "units": {"student001": unit(100, False)}}]
    record = loadtest.capacity_record(
        profile="ci", image="hubkiln-ci.qcow2", engine="container", students=3, ramp=10,
        active=30, client=client, samples=samples, host_note="the host's", boot_seconds=6.04)
    assert record["completed"] == 2
    assert record["failures"] == {"spawn: timeout": 1}
    assert record["steps"]["spawn"] == {"count": 2, "p50": 8.0, "p95": 12.0, "max": 12.0}
    assert record["hub_api"] == {"count": 1, "p50": 0.02, "p95": 0.02, "max": 0.02,
                                 "errors": 1}
    assert record["cpu"]["load1_max"] == 3.5
    assert record["memory"]["mem_available_mib"] == {"start": 20480, "min": 19456}
    assert record["host"] == {"cpus": 2, "memory_gib": 24}
    assert record["sizing"] == (
        "container on 2 vCPU / 24 GiB: 3 students at class start (logins over 10 s), "
        "2 completed, login p95 2.0 s, spawn p95 12.0 s, 1 failure; memory per active "
        "student 150 MiB (server and course kernel, median PSS), idle 100 MiB")


def test_the_sizing_line_never_fills_in_what_was_not_measured():
    client = {"students": [client_result("student001", None, {
        "step": "login", "kind": "HTTP 403", "detail": ""})], "monitor": []}
    record = loadtest.capacity_record(
        profile="ci", image="x", engine="container", students=1, ramp=0, active=0,
        client=client, samples=[], host_note="the host's", boot_seconds=1)
    assert "spawn p95 none completed" in record["sizing"]
    assert "memory per active student not measured" in record["sizing"]
    assert "1 failure;" in record["sizing"]
    assert record["sizing"].startswith("container on ? vCPU / ? GiB:")


@pytest.mark.parametrize(("engine", "accelerator", "chosen"), [
    ("auto", "kvm", "vm"), ("auto", "tcg", "container"), ("vm", "tcg", "vm"),
    ("container", "kvm", "container")])
def test_auto_picks_the_vm_only_at_native_speed(engine, accelerator, chosen):
    assert loadtest.choose_engine(engine, accelerator) == chosen


def a_record() -> dict:
    client = {"students": [client_result("student001", 8.0)], "monitor": []}
    return loadtest.capacity_record(
        profile="ci", image="hubkiln-ci.qcow2", engine="container", students=1, ramp=0,
        active=0, client=client, samples=[], host_note="the host's", boot_seconds=1)


def published(folder, name="hubkiln-ci.qcow2") -> dict:
    from hubkiln.stages import artifacts

    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"qcow2")
    manifest = {"profile": "ci", "description": "d", "files": [
        {"name": name, "format": "qcow2", "sha256": "0" * 64, "bytes": 5}],
        "validation": {"status": "passed", "passed": 3}}
    artifacts.write_manifest(folder, manifest)
    return manifest


def test_the_sizing_line_goes_into_the_manifest_and_readme_of_the_image_measured(tmp_path):
    from hubkiln.stages import artifacts

    published(tmp_path)
    record = a_record()
    assert loadtest.record_capacity(tmp_path, tmp_path / "hubkiln-ci.qcow2", record)
    capacity = artifacts.read_manifest(tmp_path)["capacity"]
    assert capacity["sizing"] == record["sizing"] and capacity["failures"] == 0
    assert capacity["steps_p95"] == {"login": 1.0, "spawn": 8.0}
    assert record["sizing"] in (tmp_path / "README.md").read_text()


def test_another_image_leaves_the_manifest_alone(tmp_path):
    from hubkiln.stages import artifacts

    published(tmp_path)
    other = tmp_path / "elsewhere.qcow2"
    other.write_bytes(b"x")
    assert not loadtest.record_capacity(tmp_path, other, a_record())
    assert "capacity" not in artifacts.read_manifest(tmp_path)
    assert not loadtest.record_capacity(tmp_path / "none", other, a_record())


def test_the_seed_holds_only_the_keys_the_load_test_sets_with_a_code_for_each_student():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG3Qm3Jk0p6vQh8m2hQ0y8WfZ9QxY5r6sP7t8u9v0w1x test"
    settings, credentials = loadtest.launch_settings(3, key)
    assert set(settings.data) == set(loadtest.LAUNCH_KEYS)
    assert settings["ssh_authorized_keys"] == [key]
    assert sorted(credentials.enrolment_codes) == loadtest.roster(3)
    assert sorted(settings["enrolment_code_hashes"]) == loadtest.roster(3)
    assert list(credentials.admin_passwords) == [loadtest.ADMIN]
    assert credentials.enrolment_codes["student001"] not in json.dumps(settings.data)


def test_failure_kinds():
    assert loadclient.failure_kind(TimeoutError()) == "timeout"
    assert loadclient.failure_kind(loadclient.StepFailed("HTTP 502", "x")) == "HTTP 502"
    assert loadclient.failure_kind(ValueError("x")) == "error: ValueError"


# ------------------------------------------------------------ the client, against a fake hub
CODES = {"student001": "AAAA-BBBB-CCCC", "student002": "DDDD-EEEE-FFFF"}
FORM = '<form><input type="hidden" name="_xsrf" value="hub-token"/></form>'


def fake_hub() -> web.Application:
    """The hub's and a server's endpoints as the client uses them, with their checks:
    the _xsrf of the form and of the API calls, the enrolment code, the websocket."""
    routes = web.RouteTableDef()

    @routes.get("/hub/login")
    async def login_page(request):
        response = web.Response(text=FORM, content_type="text/html")
        response.set_cookie("_xsrf", "hub-token", path="/hub/")
        return response

    @routes.post("/hub/login")
    async def login(request):
        form = await request.post()
        if form["_xsrf"] != request.cookies.get("_xsrf") or \
                CODES.get(form["username"], form["otp"]) != form["otp"]:
            return web.Response(status=403, text="Invalid username or password")
        raise web.HTTPFound("/hub/", headers={"Set-Cookie": "hub-session=1; Path=/hub/"})

    @routes.get("/hub/")
    async def home(request):
        return web.Response(text="spawn pending")

    @routes.get("/hub/api")
    async def version(request):
        return web.json_response({"version": "fake"})

    polls = []

    @routes.get("/hub/api/users")
    async def users(request):
        # Pre-started servers: one more ready at every poll, from the second on.
        polls.append(request.query.get("state"))
        ready = {"student001": len(polls) > 1, "student002": len(polls) > 2}
        return web.json_response([{"name": name, "servers": {"": {"ready": up}}}
                                  for name, up in ready.items()] + [{"name": "teacher"}])

    @routes.get("/hub/api/users/{name}/server/progress")
    async def progress(request):
        assert request.headers["X-XSRFToken"] == "hub-token"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in ({"progress": 50}, {"progress": 100, "ready": True}):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        return response

    @routes.get("/user/{name}/lab")
    async def lab(request):
        response = web.Response(text="lab")
        response.set_cookie("_xsrf", "server-token", path=f"/user/{request.match_info['name']}/")
        return response

    @routes.post("/user/{name}/api/kernels")
    async def start_kernel(request):
        if request.headers.get("X-XSRFToken") != "server-token":
            return web.Response(status=403)
        return web.json_response({"id": "k1"}, status=201)

    @routes.delete("/user/{name}/api/kernels/{kernel}")
    async def stop_kernel(request):
        return web.Response(status=204 if request.headers.get("X-XSRFToken") else 403)

    @routes.get("/user/{name}/api/kernels/{kernel}/channels")
    async def channels(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            sent = json.loads(message.data)
            parent = {"msg_id": sent["header"]["msg_id"]}
            failed = "raise" in sent["content"]["code"]
            reply = {"status": "error", "ename": "ValueError", "evalue": "x"} if failed \
                else {"status": "ok"}
            for kind, content in (("status", {"execution_state": "busy"}),
                                  ("execute_reply", reply),
                                  ("status", {"execution_state": "idle"})):
                await ws.send_json({"msg_type": kind, "content": content,
                                    "parent_header": parent})
        return ws

    app = web.Application()
    app.add_routes(routes)
    return app


def run_against_fake_hub(plan: dict) -> dict:
    async def main():
        runner = web.AppRunner(fake_hub())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await loadclient.run_plan({**plan, "base_url": f"http://127.0.0.1:{port}"},
                                             log=lambda line: None)
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def plan(**changes) -> dict:
    return {"admin": {"name": "teacher", "password": "p"},
            "students": [{"name": "student001", "at": 0, "code": CODES["student001"],
                          "password": "pw"},
                         {"name": "student002", "at": 0.05, "code": "WRONG-CODE",
                          "password": "pw"}],
            "first_cell": "import sys", "active_cell": "1 + 1", "active_seconds": 0.5,
            "cell_interval": 0.2, "hub_wait_seconds": 10, "deadline_seconds": 30, **changes}


def test_the_client_drives_a_student_through_every_step_and_records_a_refused_login():
    results = run_against_fake_hub(plan())
    ok, refused = results["students"]
    assert ok["failure"] is None, ok
    assert set(ok["steps"]) == {"login", "spawn", "lab", "kernel", "first_cell", "stop"}
    assert len(ok["cells"]) == 2
    assert ok["spawn_followed"] == "progress"
    assert refused["failure"]["step"] == "login"
    assert refused["failure"]["kind"] == "HTTP 403"
    assert results["monitor"] and "error" not in results["monitor"][0]


@pytest.mark.parametrize("active, interval, times", [
    (20, 20, [20]),            # active exactly one interval: one cell, at its end
    (120, 20, [20, 40, 60, 80, 100, 120]),
    (19.9, 20, []),            # shorter than one interval: no cell after the first
    (0.5, 0.2, [0.2, 0.4]),
])
def test_a_student_runs_a_cell_every_interval_while_active(active, interval, times):
    assert loadclient.cell_times(active, interval) == pytest.approx(times)


def test_a_student_active_for_exactly_one_interval_runs_one_cell():
    results = run_against_fake_hub(plan(active_seconds=0.3, cell_interval=0.3))
    assert len(results["students"][0]["cells"]) == 1


def test_a_failing_cell_is_recorded_by_its_error():
    results = run_against_fake_hub(plan(first_cell="raise ValueError('x')"))
    assert results["students"][0]["failure"]["kind"] == "cell: ValueError"
    assert results["students"][0]["failure"]["step"] == "first_cell"


def test_with_prestart_the_class_waits_until_every_server_is_ready(monkeypatch):
    monkeypatch.setattr(loadclient, "POLL_INTERVAL", 0.01)
    results = run_against_fake_hub(plan(prestart_wait_seconds=10))
    assert results["prestart"]["ready"] == results["prestart"]["of"] == 2


def test_without_prestart_nothing_is_waited_for():
    assert run_against_fake_hub(plan())["prestart"] is None


def test_ready_servers_counts_only_the_roster():
    users = [{"name": "a", "servers": {"": {"ready": True}}},
             {"name": "b", "servers": {"": {"ready": False}}}, {"name": "c", "servers": {}},
             {"name": "x", "servers": {"": {"ready": True}}}, {"name": "d"}]
    assert loadclient.ready_servers(users, {"a", "b", "c", "d"}) == 1


def test_the_prestart_schedule_opens_its_window_at_launch():
    import datetime as dt

    now = dt.datetime(2026, 12, 6, 23, 57, 30, tzinfo=dt.UTC)  # a Sunday, near midnight
    schedule = loadtest.prestart_schedule(now)
    assert schedule["sessions"] == [{"days": ["mon"], "start": "00:02", "minutes": 120}]
    assert schedule["timezone"] == "UTC"
    assert schedule["prestart_minutes"] > loadtest.PRESTART_LEAD_MINUTES


def test_the_seed_carries_the_schedule_only_when_asked():
    schedule = {"timezone": "UTC", "prestart_minutes": 10,
                "sessions": [{"days": ["tue"], "start": "09:00", "minutes": 90}]}
    settings, _ = loadtest.launch_settings(3, schedule=schedule)
    assert settings.data["class_schedule"]["sessions"] == schedule["sessions"]
    assert "class_schedule" not in loadtest.launch_settings(3)[0].data


def test_the_sizing_line_says_when_servers_were_pre_started():
    client = {"students": [client_result("student001", 0.4)], "monitor": [],
              "prestart": {"ready": 1, "of": 1, "seconds": 20.0}}
    record = loadtest.capacity_record(
        profile="ci", image="x", engine="container", students=1, ramp=0, active=0,
        client=client, samples=[], host_note="the host's", boot_seconds=1,
        schedule={"sessions": []})
    assert record["prestart"]["ready"] == 1 and record["prestart"]["seconds"] == 20.0
    assert "servers pre-started by class_schedule (1 of 1 ready)" in record["sizing"]


def test_a_pre_started_class_keeps_a_line_of_its_own(tmp_path):
    from hubkiln.stages import artifacts

    published(tmp_path)
    plain = a_record()
    client = {"students": [client_result("student001", 0.4)], "monitor": [],
              "prestart": {"ready": 1, "of": 1, "seconds": 9.0}}
    ahead = loadtest.capacity_record(
        profile="ci", image="hubkiln-ci.qcow2", engine="container", students=1, ramp=0,
        active=0, client=client, samples=[], host_note="the host's", boot_seconds=1,
        schedule={"sessions": []})
    image = tmp_path / "hubkiln-ci.qcow2"
    assert loadtest.record_capacity(tmp_path, image, plain)
    assert loadtest.record_capacity(tmp_path, image, ahead)
    manifest = artifacts.read_manifest(tmp_path)
    assert manifest["capacity"]["sizing"] == plain["sizing"]
    assert manifest["capacity_prestart"]["sizing"] == ahead["sizing"]
    assert (manifest["capacity"]["file"], manifest["capacity_prestart"]["file"]) == (
        "capacity.json", "capacity-prestart.json")
    readme = (tmp_path / "README.md").read_text()
    assert plain["sizing"] in readme and ahead["sizing"] in readme


def test_the_failed_students_journals_are_kept_before_the_machine_goes(tmp_path):
    asked = []

    class Machine:
        def guest(self, command, timeout=30):
            asked.append(command)
            return subprocess.CompletedProcess(command, 0, stdout=f"lines of {command[5]}\n")

    students = [client_result("student001", 8.0),
                client_result("student002", None, {"step": "first_cell",
                                                   "kind": "kernel died", "detail": ""})]
    kept = loadtest.keep_failed_journals(Machine(), students, tmp_path)
    assert kept == [tmp_path / "loadtest-failed-student002.log"]
    text = kept[0].read_text()
    assert "kernel died" in text and "lines of jupyter-student002-singleuser.service" in text
    assert "lines of jupyterhub.service" in text
    assert all("student001" not in " ".join(command) for command in asked)
