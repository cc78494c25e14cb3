"""fail2ban protects SSH (HARDENING.md "fail2ban or equivalent")."""

from __future__ import annotations

import json
from typing import Any

import pytest

#: Where qemu user networking's forwarded connections come from (the test host).
TEST_HOST_ADDRESS = "10.0.2.2"


@pytest.fixture(scope="module")
def hardening(host: Any) -> dict[str, Any]:
    """The hardening settings baked into the image; skips when hardening is off."""
    with host.sudo():
        found = host.file("/etc/hubkiln/hardening.json")
        settings = json.loads(found.content_string) if found.exists else {}
    if not settings.get("enabled"):
        pytest.skip("hardening.enabled is false in this image (or 80-hardening.sh did not run)")
    return settings


def test_fail2ban_runs(host, hardening, journal):
    service = host.service("fail2ban")
    assert service.is_enabled and service.is_running, journal("fail2ban.service")


def test_sshd_jail_is_active(host, hardening, journal):
    with host.sudo():
        status = host.run("fail2ban-client status sshd")
    assert status.rc == 0, status.stderr + journal("fail2ban.service")
    assert "Journal matches" in status.stdout or "File list" in status.stdout


def test_bans_use_nftables(host, hardening):
    with host.sudo():
        dump = host.run("fail2ban-client -d").stdout
    assert "nftables" in dump


def test_the_test_host_is_not_banned(host, hardening):
    """Booting and testing must not look like an attack (see docs/hardening.md)."""
    with host.sudo():
        status = host.run("fail2ban-client status sshd").stdout
    assert TEST_HOST_ADDRESS not in status.split("Banned IP list:")[-1], status
