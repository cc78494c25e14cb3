"""From the host: the front serves the hub's login page over HTTPS and redirects HTTP."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.request

import pytest


def fetch(url: str, context: ssl.SSLContext, timeout: float = 60) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers={"User-Agent": "hubkiln-image-tests"})
    with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
        return response.status, response.read().decode(errors="replace"), dict(response.headers)


def test_login_page_is_served_over_https(front, tls_context, given_settings):
    status, body, _ = fetch(front.url("/hub/login"), tls_context)
    assert status == 200
    if given_settings["authenticator"] in ("firstuse", "native"):
        assert "<form" in body and 'name="_xsrf"' in body
        assert 'name="username"' in body and 'name="password"' in body
    else:  # a login provider or an LMS: the page's button starts its login
        start = "/hub/lti13/oauth_login" if given_settings["authenticator"] == "lti13" \
            else "/hub/oauth_login"
        assert "Sign in with" in body and start in body, body[-1500:]


def test_root_leads_to_the_hub(front, tls_context):
    status, body, _ = fetch(front.url("/"), tls_context)
    assert status == 200 and "JupyterHub" in body


def test_certificate_is_served_for_any_name(front):
    """Self-signed or given at launch: the front answers without SNI and with any name."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for server_name in (None, "hub.invalid"):
        with socket.create_connection((front.address, front.https_port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.getpeercert(binary_form=True)
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_http_redirects_to_https(front):
    if front.http_port is None:
        pytest.skip("needs HUBKILN_TEST_HTTP_PORT (the host port forwarded to the guest's 80)")
    connection = http.client.HTTPConnection(front.address, front.http_port, timeout=30)
    try:
        connection.request("GET", "/hub/login?next=%2Fhub%2F")
        response = connection.getresponse()
        assert response.status in (301, 308)
        assert response.getheader("Location", "").startswith("https://")
        assert response.getheader("Location").endswith("/hub/login?next=%2Fhub%2F")
    finally:
        connection.close()


def test_next_parameter_stays_on_site(front, tls_context, given_settings):
    """?next=//elsewhere must not send a visitor to another site after login."""
    if given_settings["authenticator"] not in ("firstuse", "native"):
        pytest.skip("the OAuth login carries ?next= through the provider: "
                    "test_student_server.py checks where the hub sends the student then")
    status, body, _ = fetch(front.url("/hub/login?next=//evil.example/x"), tls_context)
    assert status == 200
    assert "//evil.example" not in body.split("<form", 1)[1].split(">", 1)[0]


def test_the_front_sees_only_its_own_storage_in_home(host):
    """The front (Caddy, user caddy) sees an empty /home except its ACME storage
    /home/.hubkiln/caddy, which it can write; the registry and hub state beside it and
    every student's home stay out of its sight."""
    pid = host.run("systemctl show -P MainPID hubkiln-front.service").stdout.strip()
    assert pid not in ("", "0"), "hubkiln-front.service is not running"
    inside = f"nsenter -t {pid} -m --"
    assert host.run(f"{inside} ls -A /home").stdout.split() == [".hubkiln"]
    assert host.run(f"{inside} ls -A /home/.hubkiln").stdout.split() == ["caddy"]
    # The stand-in is live: outside the front's namespace there is more to hide.
    outside = set(host.run("ls -A /home/.hubkiln").stdout.split())
    assert outside - {"caddy"}, f"nothing beside the storage to hide: {outside}"
    storage = host.file("/home/.hubkiln/caddy")
    assert (storage.user, storage.mode) == ("caddy", 0o700)
    probe = "/home/.hubkiln/caddy/.hubkiln-test-probe"
    try:
        wrote = host.run(f"{inside} runuser -u caddy -- touch {probe}")
        assert wrote.rc == 0, f"the front cannot write its storage: {wrote.stderr}"
        assert host.file(probe).exists  # the real folder, not a copy in the namespace
    finally:
        host.run(f"rm -f {probe}")
