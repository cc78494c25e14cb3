"""The certificate given at launch (`tls`, with the profile's `tls.mode: provided` or
instead of ACME) is the one the front serves, to every name, with HSTS; its key is
readable by the front only.

The expected certificate is the launch file's (HUBKILN_TEST_LAUNCH), compared by its
SHA-256 fingerprint with what a TLS client on the test host receives. The validation
makes one for tests/variants/tls-provided.yaml (hubkiln/validation/material.py).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any

import pytest

PROVIDED_KEY = "/etc/hubkiln/tls/provided.key"


@pytest.fixture(scope="module")
def given_certificate(launch: dict[str, Any], settings: dict[str, Any]) -> str:
    """The SHA-256 fingerprint of the launch's certificate (the first of its chain)."""
    if not launch.get("tls"):
        pytest.skip("the launch settings give no certificate (tls); "
                    "tests/variants/tls-provided.yaml boots with one")
    if settings["tls"]["mode"] == "self-signed":
        pytest.skip("the profile's tls.mode is self-signed: a given certificate is not used")
    first = launch["tls"]["certificate"].split("-----END CERTIFICATE-----")[0] + \
        "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def served_fingerprint(front: Any, server_name: str | None) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((front.address, front.https_port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


@pytest.mark.parametrize("server_name", [None, "hubkiln-test", "other.example.org"])
def test_the_given_certificate_is_served(front, given_certificate, server_name, journal):
    assert served_fingerprint(front, server_name) == given_certificate, (
        f"the front serves another certificate for {server_name or 'no SNI'}"
        + journal("hubkiln-front.service") + journal("hubkiln-firstboot.service"))


def test_a_given_certificate_comes_with_hsts(front, given_certificate, hub_client):
    _, headers, _, _ = hub_client().get("/hub/login")
    assert "max-age=" in headers.get("Strict-Transport-Security", ""), headers


def test_its_key_is_the_fronts_alone(host, given_certificate):
    key = host.file(PROVIDED_KEY)
    assert (key.user, key.group, key.mode) == ("root", "caddy", 0o640)
