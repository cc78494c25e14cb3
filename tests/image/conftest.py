"""Image tests: testinfra checks inside a booted hubkiln image, plus HTTPS checks from the host.

Everything here needs a running guest and is skipped otherwise (so that the
fast suite, which collects every folder, never checks the build host):
- tests using `host` need `--hosts=ssh://USER@127.0.0.1:PORT` (USER with sudo);
- tests using `https_url` also need HUBKILN_TEST_HTTPS_PORT (the guest's 443).
See tests/image/README.md for the invocation and tests/image/boot_vm.py for a
runner that boots an image and runs them.

Limits: the tests read what the image should do from the image itself (its
merged hub settings and /etc/hubkiln/launch.yaml), so a profile that disables a
feature skips the tests of that feature, with the reason.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

HUB_PY = "/opt/hubkiln/hub/bin/python"
#: Password the tests set for a roster student at first login (firstuse); the
#: same on every run, so the tests can run again against the same guest.
DEFAULT_PASSWORD = "hubkiln-test-password-1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    has_hosts = bool(config.getoption("hosts", None))
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if not str(item.fspath).startswith(here) or not {"host", "front"} & set(fixtures):
            continue  # pure tests of the in-guest logic run anywhere
        item.add_marker(pytest.mark.vm)
        if "host" in fixtures and not has_hosts:
            item.add_marker(pytest.mark.skip(
                reason="needs a booted image: --hosts=ssh://USER@127.0.0.1:PORT"))


_LOGIN_IS_ROOT: dict[int, bool] = {}


def login_is_root(host: Any) -> bool:
    """Whether `host` logs in as root: the ssh:// user, else asked once (before any sudo)."""
    if id(host) not in _LOGIN_IS_ROOT:
        user = getattr(getattr(host.backend, "host", None), "user", None)
        _LOGIN_IS_ROOT[id(host)] = (user == "root") if user else host.run(
            "id -u").stdout.strip() == "0"
    return _LOGIN_IS_ROOT[id(host)]


@contextlib.contextmanager
def as_root(host: Any):
    """Run `host` commands as root inside the block (the SSH user has sudo)."""
    if login_is_root(host):
        yield
    else:
        with host.sudo():
            yield


#: Seconds the tests wait for the hub after SSH answers (first boot under TCG is slow).
READY_TIMEOUT = float(os.environ.get("HUBKILN_TEST_READY_TIMEOUT", "600"))
_READY_HOSTS: set[int] = set()
HUB_API_UP = (f"{HUB_PY} -c \"import urllib.request; "
              "urllib.request.urlopen('http://127.0.0.1:8081/hub/api', timeout=10)\"")


def wait_for_hub(host: Any) -> None:
    """Wait until first boot is over and the hub answers on 127.0.0.1:8081 (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT:
        firstboot = host.run("systemctl is-active hubkiln-firstboot.service").stdout.strip()
        if firstboot not in ("activating", "inactive") and host.run(HUB_API_UP).rc == 0:
            return
        time.sleep(5)
    pytest.fail(f"the hub did not answer within {READY_TIMEOUT:.0f}s"
                + unit_journal(host, "hubkiln-firstboot.service")
                + unit_journal(host, "jupyterhub.service"))


@pytest.fixture(autouse=True)
def _as_root(request: pytest.FixtureRequest):
    """Every `host` test runs its guest commands as root, once the hub is up."""
    if "host" not in request.fixturenames:
        yield
        return
    host = request.getfixturevalue("host")
    with as_root(host):
        if id(host) not in _READY_HOSTS:
            wait_for_hub(host)
            _READY_HOSTS.add(id(host))
        yield


def unit_journal(host: Any, unit: str, lines: int = 60) -> str:
    """The end of a unit's journal, for failure messages (tests run as root, see _as_root)."""
    out = host.run(f"journalctl --no-pager -o short-monotonic -n {lines} -u {unit}")
    return f"\n--- journalctl -u {unit} (last {lines} lines) ---\n{out.stdout}{out.stderr}"


@pytest.fixture
def journal(host: Any):
    """journal(unit) -> the end of the unit's journal, to append to assertion messages."""
    return lambda unit, lines=60: unit_journal(host, unit, lines)


@pytest.fixture(scope="module")
def settings(host: Any) -> dict[str, Any]:
    """The hub settings the image runs with (merged hub.d drop-ins)."""
    with as_root(host):
        result = host.run(f"{HUB_PY} -m hubkiln_hub check")
        assert result.rc == 0, f"the hub settings do not check:\n{result.stderr}" + unit_journal(
            host, "jupyterhub.service")
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def launch(host: Any) -> dict[str, Any]:
    """The launch settings cloud-init wrote, or {} when the guest got none."""
    with as_root(host):
        launch_file = host.file("/etc/hubkiln/launch.yaml")
        if not launch_file.exists:
            return {}
        return yaml.safe_load(launch_file.content_string) or {}


@dataclass(frozen=True)
class Front:
    """Where the host reaches the guest's HTTPS front."""

    address: str
    https_port: int
    http_port: int | None

    def url(self, path: str) -> str:
        return f"https://{self.address}:{self.https_port}{path}"


@pytest.fixture(scope="session")
def front() -> Front:
    """The guest's front, once it serves the login page (bounded wait)."""
    port = os.environ.get("HUBKILN_TEST_HTTPS_PORT")
    if not port:
        pytest.skip("needs HUBKILN_TEST_HTTPS_PORT (the host port forwarded to the guest's 443)")
    http = os.environ.get("HUBKILN_TEST_HTTP_PORT")
    found = Front(os.environ.get("HUBKILN_TEST_ADDRESS", "127.0.0.1"), int(port),
                  int(http) if http else None)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    started, last = time.monotonic(), ""
    while time.monotonic() - started < READY_TIMEOUT:
        try:
            with urllib.request.urlopen(found.url("/hub/login"), context=context,
                                        timeout=30) as response:
                if response.status == 200:
                    return found
        except OSError as error:  # not up yet: refused, reset, 502 from the front
            last = str(error)
        time.sleep(5)
    pytest.fail(f"no login page at {found.url('/hub/login')} within {READY_TIMEOUT:.0f}s: {last}")


@pytest.fixture(scope="session")
def tls_context() -> ssl.SSLContext:
    """Accepts the guest's certificate: at launch without a domain it is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="session")
def student_password() -> str:
    return os.environ.get("HUBKILN_TEST_PASSWORD", DEFAULT_PASSWORD)


class HubClient:
    """A browser-like HTTPS client for the hub: cookies, the _xsrf field, manual redirects."""

    def __init__(self, front: Front, context: ssl.SSLContext, timeout: float = 120):
        self.front = front
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.cookies),
            _NoRedirects(),
        )

    def cookie(self, name: str, path_prefix: str = "/") -> str | None:
        found = [c for c in self.cookies if c.name == name and c.path.startswith(path_prefix)]
        return max(found, key=lambda c: len(c.path)).value if found else None

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], str]:
        """One request, no redirect followed: (status, headers, text)."""
        url = path if path.startswith("https://") else self.front.url(path)
        data = urllib.parse.urlencode(form).encode() if form is not None else body
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"User-Agent": "hubkiln-image-tests",
                                                  "Referer": self.front.url("/hub/"),
                                                  **(headers or {})})
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), response.read().decode(
                    errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode(errors="replace")

    def get(self, path: str, *, follow: bool = True, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], str, str]:
        """GET, following same-site redirects: (status, headers, text, final path)."""
        for _ in range(15):
            status, response_headers, text = self.request("GET", path, headers=headers)
            location = response_headers.get("Location")
            if not follow or status not in (301, 302, 303, 307, 308) or not location:
                return status, response_headers, text, path
            target = urllib.parse.urlsplit(urllib.parse.urljoin(self.front.url(path), location))
            path = target.path + (f"?{target.query}" if target.query else "")
        raise AssertionError(f"too many redirects, last: {path}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="session")
def hub_client(front: Front, tls_context: ssl.SSLContext):
    """hub_client() -> a fresh HubClient (no cookies)."""
    return lambda: HubClient(front, tls_context)


@dataclass
class StudentSession:
    """A roster student logged in through the real form, with a running server."""

    name: str
    client: HubClient
    login_location: str
    spawn_seconds: float


XSRF_FIELD = re.compile(r'name="_xsrf"\s+value="([^"]+)"')


def login_and_spawn(client: HubClient, name: str, password: str,
                    timeout: float = 420) -> StudentSession:
    """First login (firstuse sets the password), then wait until the server is ready."""
    status, _, page, _ = client.get("/hub/login")
    assert status == 200, f"login page: HTTP {status}"
    xsrf = XSRF_FIELD.search(page)
    assert xsrf, "the login form has no _xsrf field"
    status, headers, text = client.request(
        "POST", "/hub/login?next=%2F%2Fevil.example%2Fx",
        form={"_xsrf": xsrf.group(1), "username": name, "password": password})
    assert status == 302, f"login refused (HTTP {status}): {text[:500]}"
    location = headers.get("Location", "")
    started = time.monotonic()
    client.get(location if location.startswith("/") else "/hub/")  # starts the spawn
    api = {"X-XSRFToken": client.cookie("_xsrf", "/hub") or ""}
    while True:
        status, _, text = client.request("GET", f"/hub/api/users/{name}", headers=api)
        model = json.loads(text) if status == 200 else {}
        server = (model.get("servers") or {}).get("", {})
        if server.get("ready"):
            return StudentSession(name, client, location, time.monotonic() - started)
        if not model.get("pending") and time.monotonic() - started > 30 and not server:
            client.request("POST", f"/hub/api/users/{name}/server", headers=api)
        assert time.monotonic() - started < timeout, f"{name}'s server not ready: {text[:500]}"
        time.sleep(3)


@pytest.fixture(scope="session")
def _student_sessions() -> dict[str, StudentSession]:
    return {}


@pytest.fixture(scope="module")
def student(host: Any, settings: dict[str, Any], hub_client, student_password: str,
            _student_sessions: dict[str, StudentSession]) -> StudentSession:
    """The first roster student (or HUBKILN_TEST_STUDENT), logged in with a running server."""
    if settings["authenticator"] != "firstuse":
        pytest.skip(f"logging in through '{settings['authenticator']}' needs its identity "
                    "provider; the form login is tested with firstuse")
    name = os.environ.get("HUBKILN_TEST_STUDENT") or next(iter(settings["users"]), None)
    if not name:
        pytest.skip("no student on the roster (launch setting 'users')")
    if name not in _student_sessions:
        try:
            _student_sessions[name] = login_and_spawn(hub_client(), name, student_password)
        except AssertionError as error:
            with as_root(host):
                raise AssertionError(f"{error}{unit_journal(host, 'jupyterhub.service', 80)}"
                                     ) from None
    return _student_sessions[name]
