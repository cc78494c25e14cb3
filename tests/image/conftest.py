"""Image tests: testinfra checks inside a booted hubkiln image, plus HTTPS checks from the host.

Everything here needs a running guest and is skipped otherwise (so that the
fast suite, which collects every folder, never checks the build host):
- tests using `host` need `--hosts=ssh://USER@127.0.0.1:PORT` (USER with sudo);
- tests using `https_url` also need HUBKILN_TEST_HTTPS_PORT (the guest's 443).
See tests/image/README.md for the invocation; `invoke validate` boots an image and
runs them (hubkiln/validation/imagetest.py).

Limits: the tests read what the image should do from the image itself (its
merged hub settings and /etc/hubkiln/launch.yaml), so a profile that disables a
feature skips the tests of that feature, with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.cookiejar
import json
import os
import re
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

HUB_PY = "/opt/hubkiln/hub/bin/python"
#: Password the tests set for a roster student at first login (firstuse); the
#: same on every run, so the tests can run again against the same guest.
DEFAULT_PASSWORD = "hubkiln-test-password-1"


#: What only the VM engine proves (hubkiln/validation/imagetest.py): a container of the image
#: shares the build host's kernel, has no boot loader or firewall of its own as the
#: host sees it, and this host's cgroup v1 controllers may not enforce limits.
NEEDS = {
    "boot": "the image's own boot: mounts, units ordered at boot",
    "kernel": "the image's own kernel: sysctls, modules, AppArmor",
    "firewall": "the guest's nftables and fail2ban bans, as a client sees them",
    "limits": "cgroup limits enforced by the image's kernel",
    "filesystem": "the image's own ext4 file systems (quotas)",
    "disk": "a data disk attached to the machine",
    "audit": "auditd",
    "reboot": "a reboot of the machine",
    "lynis": "the Lynis audit of the whole machine",
    "network": "the build host's own network (pip-audit asks its vulnerability service)",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disruptive: hurts the guest on purpose; runs last")
    config.addinivalue_line("markers", "reboot: reboots the guest; runs after everything")
    config.addinivalue_line("markers", "needs(what): proven only in the VM engine, for "
                            f"what it needs ({', '.join(NEEDS)})")


def run_order(item: pytest.Item) -> int:
    """Plain checks first, then faults (each cleans up), then the wait for the Lynis audit
    that has been running in the background all along, then the reboot (which would
    end the audit)."""
    if item.get_closest_marker("reboot"):
        return 3
    if os.path.basename(str(item.fspath)) == "test_lynis.py":
        return 2
    return 1 if item.get_closest_marker("disruptive") else 0


#: The groups of run_order that run only with HUBKILN_TEST_FAULTS: the faults and the
#: reboot. The Lynis audit (2) always runs (HUBKILN_TEST_LYNIS=0 leaves it out).
OPT_IN = (1, 3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    has_hosts = bool(config.getoption("hosts", None))
    items.sort(key=run_order)  # stable: file order within each group
    faults = os.environ.get("HUBKILN_TEST_FAULTS", "") not in ("", "0")
    for item in items:
        for mark in item.iter_markers("needs"):
            unknown = [what for what in mark.args if what not in NEEDS]
            if unknown or not mark.args:
                raise pytest.UsageError(f"{item.nodeid}: needs({', '.join(unknown)}): "
                                        f"say what it needs, one of {', '.join(NEEDS)}")
        if run_order(item) in OPT_IN and not faults:
            item.add_marker(pytest.mark.skip(reason=(
                "fault and reboot tests run on request: `invoke build --faults`, `invoke "
                "test --faults` or HUBKILN_TEST_FAULTS=1 (CI's e2e build runs them)")))
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
        if firstboot == "failed":
            # Every later test would fail on logins without saying why: say it once here.
            pytest.fail("hubkiln-firstboot failed: the launch settings were not applied"
                        + unit_journal(host, "hubkiln-firstboot.service"))
        if firstboot not in ("activating", "inactive") and host.run(HUB_API_UP).rc == 0:
            return
        time.sleep(5)
    pytest.fail(f"the hub did not answer within {READY_TIMEOUT:.0f}s"
                + unit_journal(host, "hubkiln-firstboot.service")
                + unit_journal(host, "jupyterhub.service"))


def start_lynis_if_selected(session: pytest.Session, host: Any) -> None:
    """Start the Lynis audit in the background when test_lynis.py is among the selected
    tests: under TCG it takes 15-25 min, so it runs beside the other tests from the
    first guest command on, and test_lynis.py waits for its unit."""
    from hubkiln.validation.audit import lynis_background_command, lynis_skipped

    if lynis_skipped(os.environ):
        return
    if any(os.path.basename(str(item.fspath)) == "test_lynis.py" for item in session.items):

        host.run(lynis_background_command())


@pytest.fixture(autouse=True)
def _as_root(request: pytest.FixtureRequest):
    """Every `host` test runs its guest commands as root, once the hub is up."""
    if "host" not in request.fixturenames:
        yield
        return
    host = request.getfixturevalue("host")
    if id(host) not in _READY_HOSTS:
        start_lynis_if_selected(request.session, host)
    with as_root(host):
        if id(host) not in _READY_HOSTS:
            wait_for_hub(host)
            ignore_test_host(host, True)
            _READY_HOSTS.add(id(host))
        yield


#: The address the guest sees the tests come from: qemu's user network gateway (the
#: container engine's tests come from 127.0.0.1, which fail2ban always ignores).
TEST_CLIENT_ADDRESS = os.environ.get("HUBKILN_TEST_CLIENT_ADDRESS", "10.0.2.2")
HUB_JAIL = "hubkiln-hub"


def ignore_test_host(host: Any, ignore: bool) -> None:
    """Have fail2ban's hub jail ignore the test host (or stop ignoring it). Many tests
    fail logins on purpose; only test_hostile_login_throttle wants the ban. Images
    without the jail (hardening off) have nothing to change."""
    verb = "addignoreip" if ignore else "delignoreip"
    host.run(f"fail2ban-client set {HUB_JAIL} {verb} {TEST_CLIENT_ADDRESS}")


@pytest.fixture
def hub_jail_ignores_the_test_host(host: Any):
    """hub_jail_ignores_the_test_host(False) lets the hub jail ban the test host."""
    return lambda ignore: ignore_test_host(host, ignore)


def unit_journal(host: Any, unit: str, lines: int = 60) -> str:
    """The end of a unit's journal, for failure messages (tests run as root, see _as_root)."""
    out = host.run(f"journalctl --no-pager -o short-monotonic -n {lines} -u {unit}")
    return f"\n--- journalctl -u {unit} (last {lines} lines) ---\n{out.stdout}{out.stderr}"


@pytest.fixture
def journal(host: Any):
    """journal(unit) -> the end of the unit's journal, to append to assertion messages."""
    return lambda unit, lines=60: unit_journal(host, unit, lines)


@pytest.fixture(scope="module")
def image_settings(host: Any) -> dict[str, Any]:
    """The hub settings the image runs with (its merged hub.d drop-ins, read back from
    the image): only to compare with `given_settings`, never as the expected values."""
    with as_root(host):
        result = host.run(f"{HUB_PY} -m hubkiln_hub check")
        assert result.rc == 0, f"the hub settings do not check:\n{result.stderr}" + unit_journal(
            host, "jupyterhub.service")
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def settings(given_settings: dict[str, Any], host: Any) -> dict[str, Any]:
    """The hub settings the image must run with: `given_settings`, worked out from what
    it was given (kept under this name for the tests that decide what to check by them)."""
    return given_settings


@pytest.fixture(scope="session")
def given_launch() -> dict[str, Any]:
    """The launch settings the guest was booted with, as the build checked them
    (HUBKILN_TEST_LAUNCH), with every key; the issued hashes come from `credentials`."""
    path = os.environ.get("HUBKILN_TEST_LAUNCH")
    if not path:
        pytest.skip("needs HUBKILN_TEST_LAUNCH: the launch file the guest was booted with")
    from hubkiln.config.launch import load_launch

    return dict(load_launch(path, openssl=False).data)


@pytest.fixture(scope="module")
def launch(given_launch: dict[str, Any]) -> dict[str, Any]:
    """The launch settings given (never read back from the image)."""
    return given_launch


@pytest.fixture(scope="session")
def given_settings(given_launch: dict[str, Any]) -> dict[str, Any]:
    """The hub settings the guest must run with, worked out on the host from the profile
    (HUBKILN_TEST_PROFILE) and the launch settings given, with the image's own rules:
    hubkiln_hub's defaults and merge, and hubkiln-apply-launch's launch drop-in."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        pytest.skip("needs HUBKILN_TEST_PROFILE: the profile the image was built from")
    from hubkiln.config.guest import settings as guest_settings
    from hubkiln.config.profile import load_profile
    from hubkiln.paths import PROJECT_DIR
    from hubkiln.stages.provision import hub_settings

    rules = guest_settings()
    apply_launch = load_guest_script(PROJECT_DIR / "provision/files/bin/hubkiln-apply-launch")
    merged = rules.merge(rules.DEFAULTS, hub_settings(load_profile(path)))
    return rules.merge(merged, apply_launch.launch_dropin(given_launch))


def load_guest_script(path: Any) -> Any:
    """A guest program as a module (it imports hubkiln_hub, loaded from the repo first)."""
    from hubkiln.config.guest import load_module
    from hubkiln.config.guest import settings as guest_settings

    sys.modules.setdefault("hubkiln_hub", guest_settings())
    return load_module(f"hubkiln_guest_{path.name}", path)


@pytest.fixture(scope="session")
def hardening() -> dict[str, Any]:
    """The hardening settings of the profile the image was built from, checked as
    80-hardening.sh checks them (HUBKILN_TEST_PROFILE); skips when the profile turns
    hardening off."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        pytest.skip("needs HUBKILN_TEST_PROFILE: the profile the image was built from")
    from hubkiln.config.guest import load_module
    from hubkiln.config.profile import load_profile
    from hubkiln.paths import PROJECT_DIR
    from hubkiln.stages.provision import hardening_settings

    helper = PROJECT_DIR / "provision" / "files" / "hardening" / "hubkiln_hardening.py"
    rules = load_module("hubkiln_hardening_rules", helper)
    settings = rules.check_settings(hardening_settings(load_profile(path)))
    if not settings["enabled"]:
        pytest.skip("the profile turns hardening off (hardening.enabled: false)")
    return settings


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


@dataclass(frozen=True)
class Credentials:
    """The secrets issued with the launch settings the guest was given
    (hubkiln.config.launch.issue_credentials): the admins' hub passwords and the students'
    enrolment codes, from HUBKILN_TEST_CREDENTIALS (a JSON file; `invoke validate` writes it)."""

    admin_passwords: dict[str, str]
    enrolment_codes: dict[str, str]

    def admin_password(self, name: str) -> str:
        if name not in self.admin_passwords:
            pytest.skip(f"no hub password of admin {name} (HUBKILN_TEST_CREDENTIALS)")
        return self.admin_passwords[name]


@pytest.fixture(scope="session")
def credentials() -> Credentials:
    path = os.environ.get("HUBKILN_TEST_CREDENTIALS")
    data = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    return Credentials(data.get("admin_passwords", {}), data.get("enrolment_codes", {}))


class HubClient:
    """A browser-like HTTPS client for the hub: cookies, the _xsrf field, manual redirects."""

    def __init__(self, front: Front, context: ssl.SSLContext, timeout: float = 120):
        self.front = front
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self.last_set_cookies: list[str] = []  # the last answer's Set-Cookie lines
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
                timeout: float | None = None) -> tuple[int, dict[str, str], str]:
        """One request, no redirect followed: (status, headers, text)."""
        url = path if path.startswith("https://") else self.front.url(path)
        data = urllib.parse.urlencode(form).encode() if form is not None else body
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"User-Agent": "hubkiln-image-tests",
                                                  "Referer": self.front.url("/hub/"),
                                                  **(headers or {})})
        try:
            with self.opener.open(request, timeout=timeout or self.timeout) as response:
                self.last_set_cookies = response.headers.get_all("Set-Cookie") or []
                return response.status, dict(response.headers), response.read().decode(
                    errors="replace")
        except urllib.error.HTTPError as error:
            self.last_set_cookies = error.headers.get_all("Set-Cookie") or []
            return error.code, dict(error.headers), error.read().decode(errors="replace")

    def api(self, path: str) -> tuple[int, Any]:
        """GET a hub API path with the client's _xsrf token: (status, the JSON model, or
        the text of an error)."""
        headers = {"X-XSRFToken": self.cookie("_xsrf", "/hub") or ""}
        status, _, text = self.request("GET", path, headers=headers)
        return status, json.loads(text) if status == 200 else text

    def get(self, path: str, *, follow: bool = True, headers: dict[str, str] | None = None,
            timeout: float | None = None) -> tuple[int, dict[str, str], str, str]:
        """GET, following same-site redirects: (status, headers, text, final path)."""
        for _ in range(15):
            status, response_headers, text = self.request("GET", path, headers=headers,
                                                          timeout=timeout)
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


#: Seconds a student's login and first start may take (the image's own spawn timeout
#: is 300 s; a deliberately broken image is given less, to fail sooner).
SPAWN_TIMEOUT = float(os.environ.get("HUBKILN_TEST_SPAWN_TIMEOUT", "420"))


def form_sign_in(client: HubClient, name: str, password: str, code: str = "") -> str:
    """Log in through the hub's own form (firstuse sets the password, with the enrolment
    `code`), as a browser with a forged `?next=` does: where the hub sends the client."""
    status, _, page, _ = client.get("/hub/login")
    assert status == 200, f"login page: HTTP {status}"
    xsrf = XSRF_FIELD.search(page)
    assert xsrf, "the login form has no _xsrf field"
    status, headers, text = client.request(
        "POST", "/hub/login?next=%2F%2Fevil.example%2Fhub%2Fspawn",
        form={"_xsrf": xsrf.group(1), "username": name, "password": password, "otp": code})
    assert status == 302, f"login refused (HTTP {status}): {text[:500]}"
    return headers.get("Location", "")


def note_unanswered(name: str, unanswered: list[str]) -> None:
    """Keep the polls the front did not answer for the validation record (a report)."""
    folder = os.environ.get("HUBKILN_TEST_REPORTS")
    if folder:
        Path(folder, "front-unanswered.json").write_text(json.dumps(
            {"student": name, "polls": unanswered}))


def login_and_spawn(client: HubClient, name: str, password: str,
                    timeout: float = SPAWN_TIMEOUT, code: str = "",
                    sign_in: Any = form_sign_in) -> StudentSession:
    """First login (`sign_in`: the hub's form by default), then wait until the server is
    ready."""
    location = sign_in(client, name, password, code)
    started = time.monotonic()
    client.get(location if location.startswith("/") else "/hub/")  # starts the spawn
    api = {"X-XSRFToken": client.cookie("_xsrf", "/hub") or ""}
    attempts, idle_since, unanswered = 1, time.monotonic(), []
    while True:
        try:
            status, _, text = client.request("GET", f"/hub/api/users/{name}", headers=api)
        except OSError as error:
            # Seen once under TCG (CI replica, session 11): the front refused one poll.
            # A front that stays away still fails here; one that comes back is recorded.
            unanswered.append(f"{time.monotonic() - started:.0f}s: {error}")
            note_unanswered(name, unanswered)
            assert len(unanswered) < 4, f"the front stopped answering: {unanswered}"
            time.sleep(3)
            continue
        model = json.loads(text) if status == 200 else {}
        server = (model.get("servers") or {}).get("", {})
        if server.get("ready"):
            spawned = time.monotonic() - started
            # As a browser does next: open the server, which logs the client in through
            # the hub (OAuth); its API answers 403 to a client that never did.
            client.get(f"/user/{name}/")
            return StudentSession(name, client, location, spawned)
        if model.get("pending") or server:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 30:
            # Neither starting nor running: the spawn failed. One retry, then give up.
            assert attempts < 2, (f"{name}'s server failed to start twice "
                                  f"(neither pending nor running): {text[:500]}")
            attempts += 1
            idle_since = time.monotonic()
            client.request("POST", f"/hub/api/users/{name}/server", headers=api)
        assert time.monotonic() - started < timeout, f"{name}'s server not ready: {text[:500]}"
        time.sleep(3)


@pytest.fixture(scope="session")
def _student_sessions() -> dict[str, StudentSession]:
    return {}


@pytest.fixture(scope="module")
def student(host: Any, settings: dict[str, Any], hub_client, student_password: str,
            credentials: Credentials, enrol, sign_in,
            _student_sessions: dict[str, StudentSession]) -> StudentSession:
    """The first roster student (or HUBKILN_TEST_STUDENT), logged in with a running server
    (signed up and approved first, with the native login)."""
    name = os.environ.get("HUBKILN_TEST_STUDENT") or next(iter(settings["users"]), None)
    if not name:
        pytest.skip("no student on the roster (launch setting 'users')")
    if name not in _student_sessions:
        try:
            enrol(name, student_password)
            _student_sessions[name] = login_and_spawn(
                hub_client(), name, student_password,
                code=credentials.enrolment_codes.get(name, ""), sign_in=sign_in)
        except (AssertionError, OSError) as error:  # OSError: the front did not answer
            with as_root(host):
                raise AssertionError(
                    f"{error}{unit_journal(host, f'jupyter-{name}-singleuser', 30)}"
                    f"{unit_journal(host, 'jupyterhub.service', 80)}"
                    f"{unit_journal(host, 'hubkiln-front.service', 30)}"
                    f"{unit_journal(host, 'fail2ban.service', 30)}") from None
    return _student_sessions[name]


class WebSocket:
    """A minimal RFC 6455 client over TLS (text frames, ping/pong, close): enough for a kernel."""

    def __init__(self, front: Front, context: ssl.SSLContext, path: str, cookies: str,
                 timeout: float = 60):
        key = base64.b64encode(os.urandom(16)).decode()
        raw = socket.create_connection((front.address, front.https_port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=None)
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: {front.address}:{front.https_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nOrigin: https://{front.address}:{front.https_port}\r\n"
            f"Cookie: {cookies}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in f"{status} ":
            self.sock.close()
            raise AssertionError(f"websocket upgrade refused: {head[:300]!r}")

    def _read_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("websocket closed by the server")
            data += chunk
        return data

    def send_text(self, text: str, opcode: int = 1) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = bytes([0x80 | opcode, 0x80 | length])
        elif length < 1 << 16:
            head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", length)
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def receive_text(self, deadline: float | None = None) -> str:
        """The next complete text (or binary) message; answers pings on the way.

        `deadline` (time.monotonic()) holds across pings: a server that only pings
        never makes the wait endless."""
        message = b""
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no message before the deadline (only pings arrived)")
            first, second = self._read_exact(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read_exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_exact(8))[0]
            mask = self._read_exact(4) if second & 0x80 else b""
            payload = self._read_exact(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise ConnectionError(f"websocket closed by the server: {payload[2:]!r}")
            if opcode == 9:
                self.send_text(payload.decode(errors="replace"), opcode=10)
                continue
            if opcode == 10:
                continue
            message += payload
            if first & 0x80:
                return message.decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Execution:
    """What a cell printed, and the error it raised, if any."""

    stdout: str
    error: str | None


class Kernel:
    """A kernel of a student's server, driven over its websocket as JupyterLab does."""

    def __init__(self, student: StudentSession, front: Front, context: ssl.SSLContext,
                 kernel_name: str | None = None):
        self.student, self.base = student, f"/user/{student.name}"
        student.client.get(f"{self.base}/lab")  # sets the server's _xsrf cookie
        self.xsrf = student.client.cookie("_xsrf", self.base) or ""
        body = json.dumps({"name": kernel_name} if kernel_name else {}).encode()
        status, _, text = student.client.request(
            "POST", f"{self.base}/api/kernels", body=body,
            headers={"X-XSRFToken": self.xsrf, "Content-Type": "application/json"})
        assert status == 201, f"starting a kernel: HTTP {status}: {text[:300]}"
        self.model = json.loads(text)
        cookies = "; ".join(f"{c.name}={c.value}" for c in student.client.cookies
                            if self.base.startswith(c.path.rstrip("/")) or c.path == "/")
        self.session = os.urandom(8).hex()
        self.ws = WebSocket(front, context, f"{self.base}/api/kernels/{self.model['id']}"
                            f"/channels?session_id={self.session}&_xsrf={self.xsrf}", cookies)

    def send(self, code: str) -> str:
        """Send `code` as a cell without waiting; return the request's msg_id."""
        msg_id = os.urandom(8).hex()
        self.ws.send_text(json.dumps({
            "header": {"msg_id": msg_id, "username": self.student.name,
                       "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        return msg_id

    def execute(self, code: str, timeout: float = 300) -> Execution:
        """Run `code` as a cell; collect stdout and the error until the kernel is idle."""
        msg_id = self.send(code)
        stdout, error, replied, idle = [], None, False, False
        deadline = time.monotonic() + timeout
        self.ws.sock.settimeout(timeout)
        while not (replied and idle):
            assert time.monotonic() < deadline, f"the cell did not finish within {timeout:.0f}s"
            try:
                message = json.loads(self.ws.receive_text(deadline))
            except TimeoutError:
                raise AssertionError(f"the cell did not finish within {timeout:.0f}s") from None
            kind, content = message.get("msg_type"), message.get("content", {})
            if kind == "status" and content.get("execution_state") in ("restarting", "dead"):
                raise AssertionError(
                    f"the kernel died while running the cell (it is "
                    f"{content['execution_state']}): look for a crash or an OOM kill in the "
                    f"student's journal")
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "stream" and content.get("name") == "stdout":
                stdout.append(content["text"])
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_reply":
                replied = True
                if content.get("status") == "error" and error is None:
                    error = f"{content.get('ename')}: {content.get('evalue')}"
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
        return Execution("".join(stdout), error)

    def shutdown(self) -> None:
        self.ws.close()
        self.student.client.request("DELETE", f"{self.base}/api/kernels/{self.model['id']}",
                                    headers={"X-XSRFToken": self.xsrf})


@pytest.fixture(scope="module")
def kernel(student: StudentSession, front: Front, tls_context: ssl.SSLContext):
    """A kernel of the first student's server (the image's default kernel)."""
    started = Kernel(student, front, tls_context)
    yield started
    started.shutdown()


@pytest.fixture(scope="session")
def open_kernel(front: Front, tls_context: ssl.SSLContext):
    """open_kernel(student) -> a new Kernel of that student's server (shut it down after)."""
    return lambda session: Kernel(session, front, tls_context)


@pytest.fixture(scope="module")
def log_in(host: Any, hub_client, student_password: str, credentials: Credentials, enrol,
           sign_in, _student_sessions: dict[str, StudentSession]):
    """log_in(name) -> that roster student's session, logged in with a running server."""
    def logged_in(name: str) -> StudentSession:
        if name not in _student_sessions:
            try:
                enrol(name, student_password)
                _student_sessions[name] = login_and_spawn(
                    hub_client(), name, student_password,
                    code=credentials.enrolment_codes.get(name, ""), sign_in=sign_in)
            except AssertionError as error:
                with as_root(host):
                    raise AssertionError(
                        f"{error}{unit_journal(host, 'jupyterhub.service', 80)}") from None
        return _student_sessions[name]
    return logged_in


def post_login(client: HubClient, name: str, password: str, code: str = "",
               ) -> tuple[int, dict[str, str], str]:
    """Fill in and send the login form as a browser does: (status, headers, text)."""
    status, _, page, _ = client.get("/hub/login")
    assert status == 200, f"login page: HTTP {status}"
    xsrf = XSRF_FIELD.search(page)
    assert xsrf, "the login form has no _xsrf field"
    return client.request("POST", "/hub/login", form={
        "_xsrf": xsrf.group(1), "username": name, "password": password, "otp": code})


def form_login(client: HubClient, name: str, password: str) -> str:
    """Log `client` in through the login form; return where the hub sends it."""
    status, headers, text = post_login(client, name, password)
    assert status == 302, f"{name}'s login was refused (HTTP {status}): {text[:300]}"
    return headers.get("Location", "")


@pytest.fixture(scope="session")
def login_and_start(sign_in):
    """login_and_start(client, name, password) -> a StudentSession: the settings' login
    (sign_in), then the wait until the student's server is ready (login_and_spawn)."""
    def started(client: HubClient, name: str, password: str, **options: Any) -> StudentSession:
        return login_and_spawn(client, name, password, sign_in=sign_in, **options)
    return started


@pytest.fixture(scope="session")
def login_form(given_settings: dict[str, Any]):
    """login_form(client, name, password) -> (status, headers, text) of the form's POST."""
    if given_settings["authenticator"] not in FORM_LOGINS:
        pytest.skip(f"needs the hub's login form (firstuse, native); the settings log in "
                    f"with {given_settings['authenticator']} (test_login_oauth.py)")
    return post_login


@pytest.fixture(scope="module")
def admin_client(launch: dict[str, Any], hub_client, credentials: Credentials,
                 sign_in) -> tuple[str, HubClient]:
    """(name, client) of the first launch admin, logged in with the settings' login (the
    form, with the password issued at launch, or the login provider)."""
    admins = list(launch.get("admins") or [])
    if not admins:
        pytest.skip("no admin in the launch settings")
    client = hub_client()
    sign_in(client, admins[0], credentials.admin_password(admins[0]), "")
    return admins[0], client


def native_sign_up(client: HubClient, name: str, password: str,
                   confirmation: str | None = None) -> str:
    """The native login's sign-up form, as a browser fills it in: the page it answers."""
    status, _, page, _ = client.get("/hub/signup")
    assert status == 200, f"sign-up page: HTTP {status}"
    xsrf = XSRF_FIELD.search(page)
    assert xsrf, "the sign-up form has no _xsrf field"
    status, _, text = client.request("POST", "/hub/signup", form={
        "_xsrf": xsrf.group(1), "username": name, "signup_password": password,
        "signup_password_confirmation": password if confirmation is None else confirmation})
    assert status == 200, f"sign-up of {name}: HTTP {status}: {text[:300]}"
    return text


def native_approval(admin: HubClient, name: str) -> bool | None:
    """Whether the admin's authorization page shows `name` approved (None: not listed)."""
    status, _, page, _ = admin.get("/hub/authorize")
    assert status == 200, f"the authorization page: HTTP {status}"
    row = re.search(rf'<tr[^>]*\bid="?{re.escape(name)}"?>(.*?)</tr>', page, re.S)
    return None if row is None else "<td>Yes</td>" in row.group(1)


def native_toggle(admin: HubClient, front: Front, name: str,
                  referer: str | None = "/hub/authorize") -> int:
    """Follow the authorization page's button for `name` (it toggles the approval), as a
    browser does from `referer` (a path on the hub's site, or None for none): status."""
    headers = {"Referer": front.url(referer) if referer else ""}
    return admin.request("GET", f"/hub/authorize/{name}", headers=headers)[0]


#: The logins whose students and admins use the hub's own login form.
FORM_LOGINS = ("firstuse", "native")
#: The logins through a provider that the tests start (HUBKILN_TEST_IDP, tests/image/idp.py).
OAUTH_LOGINS = ("generic-oauth",)
HIDDEN_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def started_from(variable: str, module_file: str, make: Any):
    """Yield the server the validation describes in the JSON file `variable` names, made
    by make(module, description) from tests/image/`module_file` and started; None
    without the variable."""
    path = os.environ.get(variable)
    if not path:
        yield None
        return
    from hubkiln.config.guest import load_module

    module = load_module(f"hubkiln_test_{Path(module_file).stem}",
                         Path(__file__).with_name(module_file))
    with make(module, json.loads(Path(path).read_text(encoding="utf-8"))) as server:
        yield server


@pytest.fixture(scope="session")
def idp():
    """The login provider of the settings' OAuth login, started on the test host from
    HUBKILN_TEST_IDP (hubkiln/validation/material.py writes it), or None without one."""
    yield from started_from("HUBKILN_TEST_IDP", "idp.py", lambda module, data: (
        module.IdentityProvider(module.IdpConfig(
            host=data["host"], port=data["port"], certificate=Path(data["certificate"]),
            key=Path(data["key"]), client_id=data["client_id"],
            client_secret=data["client_secret"], redirect_uris=tuple(data["redirect_uris"]),
            directory=data["directory"], passwords=data["passwords"]))))


def provider_callback(client: HubClient, provider: Any, name: str,
                      password: str | None = None) -> str:
    """The OAuth login as a browser goes through it, up to the hub's callback: the hub's
    /hub/oauth_login sends the client to the provider's form, which `name` fills in
    (with their password at the provider, or `password`), and the provider answers with
    a redirect to the hub's callback. Returns the callback's path and query."""
    # As form_sign_in does, with a ?next= that would leave the site (the hub keeps its
    # path at most: /hub/spawn, which starts the server, as a plain login does).
    status, headers, text = client.request(
        "GET", "/hub/oauth_login?next=%2F%2Fevil.example%2Fhub%2Fspawn")
    assert status == 302, f"/hub/oauth_login: HTTP {status}: {text[:300]}"
    authorize = headers.get("Location", "")
    assert authorize.startswith(provider.url("/authorize")), (
        f"the hub sends its login to {authorize!r}, not to the provider")
    status, _, page = client.request("GET", authorize)
    assert status == 200, f"the provider's login form: HTTP {status}: {page[:300]}"
    form = dict(HIDDEN_FIELD.findall(page))
    form.update(username=name, password=password or provider.config.passwords[name])
    status, headers, text = client.request("POST", provider.url("/authorize"), form=form)
    assert status == 302, f"the provider refused {name}: HTTP {status}: {text[:300]}"
    back = urllib.parse.urlsplit(headers["Location"])
    # The redirect names the hub's domain; the test host reaches the hub at the front.
    return f"{back.path}?{back.query}"


def provider_sign_in(client: HubClient, provider: Any, name: str,
                     password: str | None = None) -> tuple[int, dict[str, str], str]:
    """The whole OAuth login: the hub's answer to the callback (status, headers, text)."""
    return client.request("GET", provider_callback(client, provider, name, password))


@pytest.fixture(scope="session")
def lms():
    """The LMS of the settings' LTI 1.3 login, started on the test host from
    HUBKILN_TEST_LMS (hubkiln/validation/material.py writes it), or None without one."""
    yield from started_from("HUBKILN_TEST_LMS", "lms.py", lambda module, data: (
        module.SimulatedLms(module.LmsConfig(
            host=data["host"], port=data["port"], certificate=Path(data["certificate"]),
            key=Path(data["key"]), client_id=data["client_id"],
            deployment_id=data["deployment_id"], tool_login_url=data["tool_login_url"],
            tool_redirect_uris=tuple(data["tool_redirect_uris"]), people=data["people"],
            courses=data["courses"]))))


def lms_launch_page(client: HubClient, lms: Any, name: str, course: str) -> tuple[str, dict]:
    """An LTI 1.3 launch as a browser makes it, up to the LMS's self-posting page: the
    LMS's page posts the login initiation to the hub (at its domain), the hub sends the
    browser to the LMS's authorization endpoint, which answers with the signed launch.
    Returns (the page's form action, its fields: id_token and state)."""
    domain = urllib.parse.urlsplit(lms.config.tool_login_url).netloc
    host = {"Host": domain}  # as the browser names the hub; the test host reaches the front
    status, headers, text = client.request("POST", "/hub/lti13/oauth_login",
                                           form=lms.launch(name, course), headers=host)
    assert status == 302, f"the hub's LTI login initiation: HTTP {status}: {text[:300]}"
    authorize = headers.get("Location", "")
    assert authorize.startswith(lms.url("/auth")), f"the hub sends the launch to {authorize!r}"
    status, _, page = client.request("GET", authorize)
    assert status == 200, f"the LMS refused the hub's authentication request: {page[:300]}"
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    assert action, f"no launch form on the LMS's page: {page[:300]}"
    return html.unescape(action.group(1)), dict(HIDDEN_FIELD.findall(page))


def lms_sign_in(client: HubClient, lms: Any, name: str, course: str,
                fields: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """The whole LTI 1.3 launch (lms_launch_page, then its post to the hub's callback,
    with `fields` changed as given): the hub's answer (status, headers, text)."""
    action, form = lms_launch_page(client, lms, name, course)
    target = urllib.parse.urlsplit(action)
    return client.request("POST", target.path, form={**form, **(fields or {})},
                          headers={"Host": target.netloc})


@dataclass(frozen=True)
class ProviderPages:
    """The provider's and the LMS's login steps, driven as a browser does
    (tests/image/test_login_oauth.py, test_login_lti.py)."""

    callback = staticmethod(provider_callback)
    sign_in = staticmethod(provider_sign_in)
    launch_page = staticmethod(lms_launch_page)
    launch = staticmethod(lms_sign_in)


@pytest.fixture(scope="session")
def provider_pages() -> ProviderPages:
    return ProviderPages()


@pytest.fixture(scope="session")
def sign_in(given_settings: dict[str, Any], idp, lms):
    """sign_in(client, name, password, code) -> where the hub sends the client once
    logged in, with the settings' login: the hub's form, or the login provider."""
    auth = given_settings["authenticator"]
    if auth in FORM_LOGINS:
        return form_sign_in
    if auth == "lti13" and lms is not None:
        course = (given_settings["oauth"].get("courses") or [None])[0]

        def launched(client: HubClient, name: str, password: str, code: str = "") -> str:
            status, headers, text = lms_sign_in(client, lms, name, course)
            assert status == 302, f"{name}'s launch from the LMS: HTTP {status}: {text[:500]}"
            return headers.get("Location", "")
        return launched
    if auth not in OAUTH_LOGINS or idp is None:
        pytest.skip(f"logging in through '{auth}' needs its identity provider; the tests "
                    "start one for generic-oauth and an LMS for lti13 in the container "
                    "engine (HUBKILN_TEST_IDP, HUBKILN_TEST_LMS)")

    def signed_in(client: HubClient, name: str, password: str, code: str = "") -> str:
        status, headers, text = provider_sign_in(client, idp, name)
        assert status == 302, f"{name}'s login through the provider: HTTP {status}: {text[:500]}"
        return headers.get("Location", "")
    return signed_in




@dataclass(frozen=True)
class NativePages:
    """The native login's pages, driven as a browser does (tests/image/test_login_native.py)."""

    sign_up = staticmethod(native_sign_up)
    approval = staticmethod(native_approval)
    toggle = staticmethod(native_toggle)


@pytest.fixture(scope="session")
def native_pages() -> NativePages:
    return NativePages()


@pytest.fixture(scope="session")
def enrol(given_settings: dict[str, Any], given_launch: dict[str, Any], hub_client,
          credentials: Credentials, front: Front):
    """enrol(name, password): make the roster student `name` able to log in with
    `password`. With firstuse nothing is needed (the first login sets it); with native
    the student signs up and the first launch admin approves the sign-up on the hub's
    authorization page, as a teacher does."""
    done: set[str] = set()

    def enrolled(name: str, password: str) -> None:
        if given_settings["authenticator"] != "native" or name in done:
            return
        page = native_sign_up(hub_client(), name, password)
        admins = list(given_launch.get("admins") or [])
        assert admins, "a native login needs an admin to approve sign-ups"
        admin = hub_client()
        form_login(admin, admins[0], credentials.admin_password(admins[0]))
        approved = native_approval(admin, name)
        assert approved is not None, f"{name}'s sign-up is not on the authorization page: " \
            + re.sub(r"\s+", " ", page)[-400:]
        if not approved:
            native_toggle(admin, front, name)
            assert native_approval(admin, name), f"the admin's approval of {name} did not hold"
        done.add(name)

    return enrolled
