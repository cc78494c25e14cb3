"""A roster student logs in through the real form and gets a contained server."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
import urllib.parse

import pytest

SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def unit_of(student) -> str:
    return f"jupyter-{student.name}-singleuser"


def microseconds(value: str) -> float:
    """systemd's time span text (`1s`, `500ms`, `1.500000s`) in microseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[match.group(2)]


def test_login_never_redirects_off_site(student):
    """The login got ?next=//evil.example/hub/spawn: the hub must not leave its site."""
    target = urllib.parse.urlsplit(student.login_location)
    assert not target.netloc and student.login_location.startswith("/"), student.login_location


def test_server_unit_is_active(host, student, journal):
    unit = unit_of(student)
    state = host.run(f"systemctl is-active {unit}").stdout.strip()
    assert state == "active", f"{unit} is {state}" + journal(unit)
    main_pid = host.run(f"systemctl show -P MainPID {unit}").stdout.strip()
    owner = host.run(f"ps -o user= -p {main_pid}").stdout.strip()
    assert owner == student.name


@pytest.mark.needs("limits")
def test_server_unit_has_the_profiles_limits(host, student, given_settings):
    limits = given_settings["limits"]
    show = host.run(f"systemctl show -p MemoryMax -p CPUQuotaPerSecUSec -p TasksMax "
                    f"{unit_of(student)}")
    shown = dict(line.split("=", 1) for line in show.stdout.split())
    memory, cpu, tasks = shown["MemoryMax"], shown["CPUQuotaPerSecUSec"], shown["TasksMax"]
    number, unit = float(limits["memory"][:-1]), limits["memory"][-1]
    assert int(memory) == int(number * SIZES[unit])
    assert microseconds(cpu) == pytest.approx(float(limits["cpu"]) * 1e6, rel=0.01)
    assert int(tasks) == limits["tasks"]


@pytest.mark.needs("limits")
def test_servers_run_in_the_students_slice_below_the_hub(host, student):
    assert host.run(f"systemctl show -P Slice {unit_of(student)}").stdout.strip() == (
        "hubkiln-students.slice")
    students = int(host.run("systemctl show -P CPUWeight hubkiln-students.slice").stdout)
    system = host.run("systemctl show -P CPUWeight system.slice").stdout.strip()
    hub = 100 if system in ("[not set]", "") else int(system)  # the kernel's default
    assert students < hub


@pytest.mark.parametrize(("prop", "expected"), [
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictSUIDSGID", "yes"),
    ("OOMPolicy", "continue"),
])
def test_server_unit_is_sandboxed(host, student, prop, expected):
    assert host.run(f"systemctl show -P {prop} {unit_of(student)}").stdout.strip() == expected


def test_only_the_home_is_writable(host, student):
    unit = unit_of(student)
    assert host.run(f"systemctl show -P ReadOnlyPaths {unit}").stdout.split() == ["/"]
    home = host.user(student.name).home
    assert host.run(f"systemctl show -P ReadWritePaths {unit}").stdout.split() == [home]


def test_server_answers_through_the_front(student):
    deadline = time.monotonic() + 180  # a server that just started can be slow under TCG
    while True:
        status, _, text, path = student.client.get(f"/user/{student.name}/api/status")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert status == 200, f"HTTP {status} at {path}: {text[:300]}"
    assert "started" in json.loads(text)


def test_kernel_websocket_passes_the_front(student, front, tls_context):
    """Start a kernel over the REST API, then open its websocket: the front must upgrade."""
    base = f"/user/{student.name}"
    student.client.get(f"{base}/lab")  # sets the server's _xsrf cookie
    xsrf = student.client.cookie("_xsrf", base) or ""
    status, _, text = student.client.request(
        "POST", f"{base}/api/kernels", body=b"{}",
        headers={"X-XSRFToken": xsrf, "Content-Type": "application/json"})
    assert status == 201, f"HTTP {status}: {text[:300]}"
    kernel = json.loads(text)["id"]
    try:
        cookies = "; ".join(f"{c.name}={c.value}" for c in student.client.cookies
                            if base.startswith(c.path.rstrip("/")) or c.path == "/")
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET {base}/api/kernels/{kernel}/channels?_xsrf={xsrf} HTTP/1.1\r\n"
            f"Host: {front.address}:{front.https_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            f"Origin: https://{front.address}:{front.https_port}\r\n"
            f"Cookie: {cookies}\r\n\r\n")
        with socket.create_connection((front.address, front.https_port), timeout=60) as raw, \
                tls_context.wrap_socket(raw, server_hostname=None) as tls:
            tls.sendall(handshake.encode())
            reply = tls.recv(4096).decode(errors="replace")
        assert reply.startswith("HTTP/1.1 101"), reply[:300]
    finally:
        student.client.request("DELETE", f"{base}/api/kernels/{kernel}",
                               headers={"X-XSRFToken": xsrf})


def test_login_cookies_are_secure_and_http_only(student):
    """The hub sees HTTPS through the front and the proxy (X-Forwarded-Proto)."""
    cookies = [c for c in student.client.cookies if c.name.startswith("jupyterhub-")]
    assert cookies, "no jupyterhub cookies after login"
    for cookie in cookies:
        assert cookie.secure, f"{cookie.name} is not Secure"
        assert cookie.has_nonstandard_attr("HttpOnly"), f"{cookie.name} is not HttpOnly"


def test_jupyterlab_asks_for_no_news_and_no_updates(student):
    """An offline class: JupyterLab neither offers Jupyter's news feed nor checks for a new
    version (provision/files/user/lab-overrides.json), as the student's own Lab reads
    its settings."""
    base = f"/user/{student.name}"
    student.client.get(f"{base}/lab")  # the server's _xsrf cookie
    headers = {"X-XSRFToken": student.client.cookie("_xsrf", base) or ""}
    status, _, text = student.client.request(
        "GET", f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification",
        headers=headers)
    assert status == 200, f"the Lab's settings: HTTP {status}: {text[:300]}"
    # The server applies the overrides to the schema's defaults, which hold for a student
    # who has changed nothing (their own settings come on top).
    model = json.loads(text)
    defaults = {key: value.get("default") for key, value in
                model["schema"]["properties"].items()}
    assert (defaults.get("fetchNews"), defaults.get("checkForUpdates")) == ("false", False), \
        defaults
    assert not {"fetchNews", "checkForUpdates"} & set(model.get("settings") or {})
