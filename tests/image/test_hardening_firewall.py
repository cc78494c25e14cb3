"""The nftables firewall (HARDENING.md "firewall", "listening"): the rules of the image,
what listens on which address, and a connection the firewall must drop. The output
rules for cloud metadata are attacked in test_hostile_metadata.py."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

#: Proven in the VM only (the firewall as the host sees it): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("firewall")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "provision/files/hardening"))
from hubkiln_hardening import (  # noqa: E402
    METADATA_ADDRESSES,
    SettingsError,
    check_settings,
    render_nftables,
)

#: Ports that may listen on a non-loopback address.
PUBLIC_PORTS = {22, 80, 443}



# ------------------------------------------------- the renderer (no guest needed)


def test_rendered_ruleset_drops_by_default_and_opens_web_and_ssh():
    rules = render_nftables(check_settings({}))
    assert "policy drop;" in rules.split("chain input")[1].split("}")[0]
    assert "tcp dport { 80, 443 } accept" in rules
    assert "elements = { 0.0.0.0/0 }" in rules and "elements = { ::/0 }" in rules


def test_ssh_networks_are_split_by_family_and_extra_ports_opened():
    rules = render_nftables(check_settings({"ssh_allowed_networks": ["10.1.2.3/16"],
                                            "extra_open_ports": [8888, 443]}))
    assert "elements = { 10.1.0.0/16 }" in rules
    assert "ssh_allowed_v6 {\n        type ipv6_addr\n        flags interval\n    }" in rules
    assert "tcp dport { 80, 443, 8888 } accept" in rules


def test_bad_settings_name_every_key():
    with pytest.raises(SettingsError) as error:
        check_settings({"ssh_allowed_networks": ["nope"], "extra_open_ports": [0],
                        "ptrace_scope": 7, "colour": 1})
    for key in ("ssh_allowed_networks[0]", "extra_open_ports[0]", "ptrace_scope", "colour"):
        assert key in str(error.value)


# ------------------------------------------------------------- the booted image


def test_firewall_service_is_enabled_and_loaded(host, hardening, journal):
    service = host.service("nftables")
    assert service.is_enabled and service.is_running, journal("nftables.service")
    ruleset = host.run("nft list table inet hubkiln_filter")
    assert ruleset.rc == 0, ruleset.stderr + journal("nftables.service")
    assert "policy drop" in ruleset.stdout


def test_loaded_rules_are_the_profiles(host, hardening):
    loaded = host.run("nft list table inet hubkiln_filter").stdout
    for port in hardening["extra_open_ports"]:
        assert str(port) in loaded
    for network in hardening["ssh_allowed_networks"]:
        assert network in loaded
    output = loaded.split("chain output {")[1]
    for address in METADATA_ADDRESSES:
        assert address in loaded, f"metadata address {address} missing from the loaded rules"
    assert output.count("meta skuid != 0 reject") == 2, output


@pytest.mark.parametrize("address,port", [("127.0.0.1", 8081), ("127.0.0.1", 8001),
                                          ("127.0.0.1", 8000)])
def test_hub_and_proxy_listen_on_localhost_only(host, hardening, address, port):
    assert host.socket(f"tcp://{address}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_only_ssh_http_and_https_listen_outside_localhost(host, hardening):
    out = host.run("ss -Htln").stdout
    public = set()
    for line in out.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        if not address.strip("[]").startswith(("127.", "::1")) and address != "[::ffff:127.0.0.1]":
            public.add(int(port))
    allowed = PUBLIC_PORTS | set(hardening["extra_open_ports"])
    assert public <= allowed, f"listening outside localhost: {sorted(public - allowed)}"


BLOCKED_PORT_IN_GUEST = 8099


def test_a_port_outside_the_allowlist_is_dropped(host, hardening):
    """A listener on a port the firewall does not open cannot be reached from the host.

    Needs HUBKILN_TEST_BLOCKED_PORT: the host port that the test VM forwards to the
    guest's port 8099 (qemu user networking accepts on the host side, so a dropped
    connection shows as one that closes without an answer).
    """
    forwarded = os.environ.get("HUBKILN_TEST_BLOCKED_PORT")
    if not forwarded:
        pytest.skip("needs HUBKILN_TEST_BLOCKED_PORT (host port forwarded to guest port 8099)")
    listener = host.run(f"systemd-run --unit=hubkiln-fw-probe --collect -p DynamicUser=yes "
                        f"python3 -m http.server {BLOCKED_PORT_IN_GUEST} --bind 0.0.0.0")
    assert listener.rc == 0, listener.stderr
    try:
        assert host.run(f"timeout 20 sh -c 'until ss -Htln | grep -q :{BLOCKED_PORT_IN_GUEST}; "
                        "do sleep 1; done'").rc == 0
        answer = b""
        try:
            with socket.create_connection(("127.0.0.1", int(forwarded)), timeout=15) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = conn.recv(100)
        except OSError:
            pass  # refused, reset or timed out: the firewall dropped it
        assert not answer.startswith(b"HTTP/"), f"the guest answered: {answer!r}"
    finally:
        host.run("systemctl stop hubkiln-fw-probe")
