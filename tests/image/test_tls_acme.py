"""ACME in the image, end to end against a local ACME CA inside the guest.

A second, test-only Caddy in the guest is an ACME CA (`acme_server`, Caddy's own
CA) on 127.0.0.1:9443; hub.hubkiln.test (`.test` never resolves publicly) points
at 127.0.0.1 in the guest's /etc/hosts. The launch settings are re-applied with
that domain and `acme_ca`/`acme_ca_root`, as a university's own CA would be given.
From the host (the `front`), with the domain as SNI: the front serves its
self-signed certificate until the certificate is issued, then one that the local
CA's root verifies, and the self-signed one for every other name. A CA that does
not answer leaves the self-signed front serving the domain, with the failure in
the journal. The attack: a front that serves nothing (or claims Let's Encrypt)
while ACME fails; without the fallback the handshake for the domain fails (Caddy
2.6.2, checked by hand). Everything is restored after (the original launch file
re-applied, the test CA's state removed).
"""

from __future__ import annotations

import base64
import shlex
import socket
import ssl
import time
from typing import Any

import pytest
import yaml

APPLY = "/usr/local/sbin/hubkiln-apply-launch"
WORK = "/run/hubkiln-test-acme"
CA_UNIT = "hubkiln-test-acme"
CA_URL = "https://127.0.0.1:9443/acme/local/directory"
CA_KEY = "127.0.0.1-9443-acme-local-directory"
#: Nothing listens there: a CA that cannot issue.
DEAD_CA_URL = "https://127.0.0.1:9444/acme/none/directory"
DEAD_CA_KEY = "127.0.0.1-9444-acme-none-directory"
DOMAIN = "hub.hubkiln.test"
STORAGE = "/home/.hubkiln/caddy"
SELF_SIGNED = "/etc/hubkiln/tls/self-signed.crt"
HOSTS_MARK = "# hubkiln-test-acme"
HUB_API_UP = ("/opt/hubkiln/hub/bin/python -c \"import urllib.request; "
              "urllib.request.urlopen('http://127.0.0.1:8081/hub/api', timeout=10)\"")
CA_UP = ("/opt/hubkiln/hub/bin/python -c \"import socket; "
         "socket.create_connection(('127.0.0.1', 9443), 5).close()\"")
CA_CADDYFILE = f"""{{
\tadmin off
\tstorage file_system {WORK}/ca
\t# never touch the guest's trust store
\tskip_install_trust
\tauto_https disable_redirects
}}

https://127.0.0.1:9443 {{
\ttls internal
\tacme_server
}}
"""


def run(host: Any, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command}: rc {result.rc}\n{result.stdout}{result.stderr}"
    return result.stdout


def put(host: Any, path: str, text: str, mode: str = "0600") -> None:
    encoded = base64.b64encode(text.encode()).decode()
    run(host, f"echo {encoded} | base64 -d > {path}.new && chmod {mode} {path}.new "
              f"&& mv -f {path}.new {path}")


def served(front: Any, server_name: str | None, cadata: str | None = None,
           timeout: float = 60) -> bytes:
    """The certificate (DER) the front serves for `server_name`, waiting while the front
    restarts. With `cadata`, the handshake must verify against that root and name."""
    context = ssl.create_default_context(cadata=cadata) if cadata else ssl.create_default_context()
    if not cadata:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((front.address, front.https_port), timeout=20) as raw, \
                    context.wrap_socket(raw, server_hostname=server_name) as tls:
                return tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError:
            raise
        except OSError as error:  # refused or reset while the front restarts
            last = error
            time.sleep(2)
    raise AssertionError(f"no TLS handshake for {server_name}: {last}")


def verifies(front: Any, server_name: str, root: str) -> bool:
    try:
        served(front, server_name, cadata=root)
    except ssl.SSLCertVerificationError:
        return False
    return True


def get_once(front: Any, server_name: str, path: str) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((front.address, front.https_port), timeout=60) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nUser-Agent: "
                    "hubkiln-image-tests\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    return int(head.split()[1]), head


def get(front: Any, server_name: str, path: str = "/hub/login",
        timeout: float = 300) -> tuple[int, str]:
    """(status, response head) of a GET with `server_name` as SNI and Host; waits while
    the hub restarts (a changed domain restarts it: 502/503 from the front)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, head = get_once(front, server_name, path)
        except (OSError, IndexError, ValueError) as error:
            status, head = 0, str(error)
        if status not in (0, 502, 503) or time.monotonic() > deadline:
            return status, head
        time.sleep(3)


def wait_for(host: Any, command: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while host.run(command).rc != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True


@pytest.fixture
def acme_front(host: Any, given_settings: dict[str, Any], journal):
    """apply(**launch keys) re-applies the guest's launch settings with them (the domain,
    the CA); afterwards the original launch file is applied again and the test CA's
    state, the hosts entry and the check timer are put back."""
    if given_settings["tls"]["mode"] != "auto":
        pytest.skip(f"the profile's tls.mode is {given_settings['tls']['mode']!r}: no ACME")
    original = host.file("/etc/hubkiln/launch.yaml")
    base = (yaml.safe_load(original.content_string) or {}) if original.exists else {}
    host.run(f"systemctl stop {CA_UNIT}.service")  # left over from an interrupted run

    def forget_test_cas() -> None:
        for key in (CA_KEY, DEAD_CA_KEY):
            host.run(f"rm -rf {STORAGE}/certificates/{key} {STORAGE}/acme/{key}")

    forget_test_cas()
    run(host, f"install -d -m 0700 {WORK} && cp -a /etc/hosts {WORK}/hosts.orig")
    run(host, "systemctl stop hubkiln-front-check.timer")  # the test runs the check itself

    def apply(**keys: Any) -> str:
        launch = {**base, "tls": None, "acme_email": None, **keys}
        put(host, f"{WORK}/launch.yaml", yaml.safe_dump(launch))
        return run(host, f"{APPLY} --file {WORK}/launch.yaml")

    try:
        yield apply
    finally:
        host.run(f"systemctl stop {CA_UNIT}.service")
        host.run(f"cat {WORK}/hosts.orig > /etc/hosts")
        restored = host.run(APPLY)
        forget_test_cas()
        host.run(f"rm -rf {WORK}")
        host.run("systemctl start hubkiln-front-check.timer")
        assert restored.rc == 0, f"restoring the launch settings: {restored.stderr}" + journal(
            "hubkiln-front.service")
        assert wait_for(host, HUB_API_UP, 300), "the hub did not answer after the restore" \
            + journal("jupyterhub.service")


@pytest.fixture
def local_ca(host: Any, acme_front, journal) -> str:
    """The local ACME CA running in the guest (a transient unit, stopped by acme_front);
    its root (PEM)."""
    put(host, f"{WORK}/Caddyfile", CA_CADDYFILE)
    run(host, f"systemd-run --unit {CA_UNIT} --collect -p RuntimeMaxSec=900 "
              f"--setenv HOME={WORK} /usr/bin/caddy run --config {WORK}/Caddyfile "
              "--adapter caddyfile")
    root = f"{WORK}/ca/pki/authorities/local/root.crt"
    assert wait_for(host, f"test -s {root} && {CA_UP}", 60), (
        "the local ACME CA did not answer" + journal(f"{CA_UNIT}.service"))
    run(host, f"printf '127.0.0.1 {DOMAIN} {HOSTS_MARK}\\n' >> /etc/hosts")
    return host.file(root).content_string


def self_signed(host: Any) -> bytes:
    return ssl.PEM_cert_to_DER_cert(host.file(SELF_SIGNED).content_string)


def test_a_local_acme_ca_issues_the_domains_certificate(host, front, acme_front, local_ca,
                                                        journal):
    said = acme_front(domain=DOMAIN, acme_ca=CA_URL, acme_ca_root=local_ca)
    assert f"ACME ({CA_URL}) for {DOMAIN}, self-signed until it issues" in said
    assert "Let's Encrypt" not in said
    # Until the check has seen the certificate: the self-signed one, for the domain too.
    assert served(front, DOMAIN) == self_signed(host)
    status, head = get(front, DOMAIN)
    assert status == 200 and "Strict-Transport-Security" not in head
    deadline = time.monotonic() + 240
    while not verifies(front, DOMAIN, local_ca):
        assert time.monotonic() < deadline, ("the local CA's certificate was never served"
                                             + journal("hubkiln-front.service", 80)
                                             + journal("hubkiln-front-check.service")
                                             + journal(f"{CA_UNIT}.service"))
        run(host, "systemctl start hubkiln-front-check.service")
        time.sleep(3)
    # The stand-in is live: what the domain gets now is not the self-signed certificate.
    assert served(front, DOMAIN) != self_signed(host)
    for other in (None, "other.hubkiln.test"):
        assert served(front, other) == self_signed(host), other
    status, head = get(front, DOMAIN)
    assert status == 200 and "Strict-Transport-Security: max-age=31536000" in head
    assert "header_up X-Real-Ip {remote_host}" in host.file(
        "/etc/hubkiln/front/Caddyfile").content_string
    # Caddy's state lives beside the homes, the front's own.
    issued = host.file(f"{STORAGE}/certificates/{CA_KEY}/{DOMAIN}/{DOMAIN}.crt")
    assert issued.exists and issued.user == "caddy"
    storage = host.file(STORAGE)
    assert (storage.user, storage.mode) == ("caddy", 0o700)
    assert host.file("/home/.hubkiln").user == "root"
    # A new term with the same storage: applied again with the CA gone, the front starts
    # with the stored certificate and never asks the CA.
    run(host, f"systemctl stop {CA_UNIT}.service")
    since = run(host, "date +%s").strip()
    run(host, "systemctl restart hubkiln-front.service")
    said = acme_front(domain=DOMAIN, acme_ca=CA_URL, acme_ca_root=local_ca)
    assert "its certificate is in place" in said
    assert verifies(front, DOMAIN, local_ca)
    asked = run(host, f"journalctl -u hubkiln-front.service --since @{since} -o cat")
    assert '"obtaining certificate"' not in asked, asked[-2000:]


def test_a_ca_that_cannot_issue_leaves_the_self_signed_front(host, front, acme_front,
                                                             journal):
    since = run(host, "date +%s").strip()
    said = acme_front(domain=DOMAIN, acme_ca=DEAD_CA_URL)
    assert "self-signed until it issues" in said and "Let's Encrypt" not in said
    attempt = (f"journalctl -u hubkiln-front.service --since @{since} -o cat "
               f"| grep -F {shlex.quote('could not get certificate')} | grep -qF {DOMAIN}")
    assert wait_for(host, attempt, 90), "Caddy logged no failed attempt" + journal(
        "hubkiln-front.service")
    # The front still serves the domain, with the self-signed certificate.
    assert served(front, DOMAIN) == self_signed(host)
    status, head = get(front, DOMAIN)
    assert status == 200 and "Strict-Transport-Security" not in head
    # The check says so, with Caddy's reason and what to check, on the console too.
    run(host, "systemctl start hubkiln-front-check.service")
    report = run(host, f"journalctl -u hubkiln-front-check.service --since @{since} -o cat")
    assert f"no ACME certificate for {DOMAIN} yet" in report, report
    assert "connection refused" in report, report  # Caddy's own reason, passed on
    assert f"DNS record of {DOMAIN}" in report and "TCP 80 and 443" in report, report
    assert run(host, "systemctl show -P StandardError hubkiln-front-check.service").strip() == (
        "journal+console")
