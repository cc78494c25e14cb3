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


def test_login_page_is_served_over_https(front, tls_context):
    status, body, _ = fetch(front.url("/hub/login"), tls_context)
    assert status == 200
    assert "<form" in body and 'name="_xsrf"' in body
    assert 'name="username"' in body and 'name="password"' in body or "Sign in with" in body


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


def test_next_parameter_stays_on_site(front, tls_context):
    """?next=//elsewhere must not send a visitor to another site after login."""
    status, body, _ = fetch(front.url("/hub/login?next=//evil.example/x"), tls_context)
    assert status == 200
    assert "//evil.example" not in body.split("<form", 1)[1].split(">", 1)[0]
