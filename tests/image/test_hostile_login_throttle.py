"""Password guessing on the hub's login form bans the guesser's address (docs/hardening.md,
"Hub login throttling"; fail2ban's hubkiln-hub jail).

The attack: from the test host, more than hubkiln_hardening.HUB_LOGIN_MAXRETRY wrong
passwords for a roster student, each POST carrying forged X-Real-Ip and
X-Forwarded-For headers (a guesser who hides behind a made-up address would never be
banned, and could get any address banned instead). Expected: the test host's own
address (10.0.2.2 under qemu's user network) is banned, the forged one is not, and
the front no longer answers it on 443 (nor 80); after the unban the login page
answers again. The login page must answer before the attack (the stand-in is live),
so an image without the jail fails here. The thresholds come from the repository's
hubkiln_hardening.py, not from the image.

Every test of the suite comes from 10.0.2.2, and several fail logins on purpose: the
suite's conftest has the jail ignore the test host (`hub_jail_ignores_the_test_host`)
and this test lifts that for its own attack; the finally unbans the test host and
ignores it again, whatever happens. The guessed name is the roster student no other
test logs in as (HUBKILN_TEST_TARGET): hubkiln_auth also locks a guessed name.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "provision/files/hardening"))
from hubkiln_hardening import HUB_JAIL, HUB_LOGIN_MAXRETRY  # noqa: E402

#: Where qemu user networking's forwarded connections come from (the test host).
TEST_HOST_ADDRESS = "10.0.2.2"
pytestmark = pytest.mark.needs("firewall")
#: What the guesser claims to be (TEST-NET-3: belongs to nobody).
FORGED_ADDRESS = "203.0.113.7"
FORGED = {"X-Real-Ip": FORGED_ADDRESS, "X-Forwarded-For": FORGED_ADDRESS}
XSRF = re.compile(r'name="_xsrf"\s+value="([^"]+)"')
#: Seconds fail2ban may take to read the journal and ban; and the front to answer again.
BAN_WAIT = 60
#: Seconds from the address being listed as banned to the firewall dropping it: fail2ban
#: lists a ban before its action has run, and the jail's first ban also creates its
#: nftables table, which takes seconds of emulated CPU.
ENFORCE_WAIT = 30
#: Errors of a request the guest no longer answers (qemu accepts on the host side, then
#: closes: reset, end of file in the TLS handshake, or a timeout).
UNANSWERED = (OSError, http.client.HTTPException)



def banned(host: Any) -> list[str]:
    """The jail's banned addresses, as an admin sees them (`fail2ban-client status`)."""
    status = host.run(f"fail2ban-client status {HUB_JAIL}")
    assert status.rc == 0, f"fail2ban has no {HUB_JAIL} jail: {status.stdout}{status.stderr}"
    listed = status.stdout.split("Banned IP list:")[-1]
    return listed.split()


def login_page_status(client) -> int | None:
    """HTTP status of the login page, or None when the guest does not answer."""
    try:
        return client.request("GET", "/hub/login", timeout=15)[0]
    except UNANSWERED:
        return None


def http_answers(front) -> bool:
    """Whether the front's HTTP port (80 in the guest) answers at all."""
    try:
        with socket.create_connection((front.address, front.http_port), timeout=15) as conn:
            conn.sendall(b"GET /hub/login HTTP/1.0\r\nHost: hubkiln\r\n\r\n")
            return conn.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def forged_failed_login(client, name: str, password: str) -> int:
    """The login form with a wrong password and forged address headers: the status."""
    status, _, page = client.request("GET", "/hub/login", timeout=30)
    assert status == 200, f"login page: HTTP {status}"
    xsrf = XSRF.search(page)
    assert xsrf, "the login form has no _xsrf field"
    return client.request("POST", "/hub/login", headers=FORGED, timeout=60, form={
        "_xsrf": xsrf.group(1), "username": name, "password": password})[0]


def enforced(front, client_factory) -> tuple[int | None, bool]:
    """Wait up to ENFORCE_WAIT for the front to stop answering on 443 (and on 80 when the
    guest has it): (the last login page status, whether HTTP still answered)."""
    deadline = time.monotonic() + ENFORCE_WAIT
    while True:
        status = login_page_status(client_factory())
        plain = bool(front.http_port) and http_answers(front)
        if (status is None and not plain) or time.monotonic() >= deadline:
            return status, plain
        time.sleep(2)


def unban(host: Any) -> None:
    for address in (TEST_HOST_ADDRESS, FORGED_ADDRESS):
        # Fails when the address is not banned: nothing to undo then.
        host.run(f"fail2ban-client set {HUB_JAIL} unbanip {address}")


def test_repeated_failed_logins_ban_the_guessers_address(host, hardening, front, hub_client,
                                                         journal, hub_jail_ignores_the_test_host):
    def logs() -> str:
        return journal("fail2ban.service", 30) + journal("jupyterhub.service", 30)

    name = os.environ.get("HUBKILN_TEST_TARGET")
    if not name:
        pytest.skip("needs HUBKILN_TEST_TARGET: a roster student no other test uses")
    client, failures = hub_client(), 0
    hub_jail_ignores_the_test_host(False)
    try:
        assert TEST_HOST_ADDRESS not in banned(host), "the test host is banned before the test"
        assert login_page_status(client) == 200, "the login page does not answer (stand-in)"
        if front.http_port:
            assert http_answers(front), "the front's HTTP port does not answer before the attack"
        for attempt in range(HUB_LOGIN_MAXRETRY + 1):
            try:
                status = forged_failed_login(client, name, f"not-the-password-{attempt}")
            except UNANSWERED:
                break  # banned already: earlier failures of this address count too
            # 429: the authenticator slows this user down; still a failed login.
            assert status in (403, 429), f"wrong password {attempt + 1}: HTTP {status}"
            failures += 1
        assert failures, "not one failed login was answered"
        deadline = time.monotonic() + BAN_WAIT
        while TEST_HOST_ADDRESS not in (found := banned(host)):
            assert FORGED_ADDRESS not in found, (
                f"fail2ban banned the forged X-Real-Ip {FORGED_ADDRESS}, not the client: the "
                "hub takes the client's address from a header the client sent" + logs())
            assert time.monotonic() < deadline, (
                f"{TEST_HOST_ADDRESS} not banned {BAN_WAIT}s after {failures} failed logins "
                f"(maxretry {HUB_LOGIN_MAXRETRY}); banned: {found}" + logs())
            time.sleep(2)
        assert FORGED_ADDRESS not in found, f"the forged address is banned too: {found}"
        status, plain = enforced(front, hub_client)
        assert status is None, (
            f"the front still answers a banned address {ENFORCE_WAIT}s after the ban "
            f"(HTTP {status}): {banned(host)}" + logs())
        assert not plain, "the front's HTTP port answers a banned address" + logs()
    finally:
        hub_jail_ignores_the_test_host(True)
        unban(host)
        deadline = time.monotonic() + BAN_WAIT
        while login_page_status(hub_client()) != 200 and time.monotonic() < deadline:
            unban(host)  # a ban that came late
            time.sleep(3)
    assert TEST_HOST_ADDRESS not in banned(host)
    assert login_page_status(hub_client()) == 200, "the login page does not answer after the unban"
