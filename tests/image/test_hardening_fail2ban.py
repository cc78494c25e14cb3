"""fail2ban protects SSH and the hub's login form (HARDENING.md "fail2ban or equivalent").
The hub jail's bans themselves are attacked in test_hostile_login_throttle.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

#: Proven in the VM only (bans through the guest's nftables): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("firewall")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "provision/files/hardening"))
from hubkiln_hardening import (  # noqa: E402
    HUB_JAIL,
    HUB_LOGIN_BANTIME,
    HUB_LOGIN_FINDTIME,
    HUB_LOGIN_MAXRETRY,
)

JAILS = ("sshd", HUB_JAIL)

#: Where qemu user networking's forwarded connections come from (the test host).
TEST_HOST_ADDRESS = "10.0.2.2"



def test_fail2ban_runs(host, hardening, journal):
    service = host.service("fail2ban")
    assert service.is_enabled and service.is_running, journal("fail2ban.service")


@pytest.mark.parametrize("jail", JAILS)
def test_jail_is_active(host, hardening, journal, jail):
    with host.sudo():
        status = host.run(f"fail2ban-client status {jail}")
    assert status.rc == 0, status.stderr + journal("fail2ban.service")
    assert "Journal matches" in status.stdout or "File list" in status.stdout


def test_hub_jail_reads_the_hubs_journal(host, hardening):
    with host.sudo():
        matches = host.run(f"fail2ban-client get {HUB_JAIL} journalmatch").stdout
    assert "_SYSTEMD_UNIT=jupyterhub.service" in matches


@pytest.mark.parametrize("option,expected", [("maxretry", HUB_LOGIN_MAXRETRY),
                                             ("findtime", HUB_LOGIN_FINDTIME),
                                             ("bantime", HUB_LOGIN_BANTIME)])
def test_hub_jail_thresholds_are_hubkilns(host, hardening, option, expected):
    with host.sudo():
        value = host.run(f"fail2ban-client get {HUB_JAIL} {option}").stdout.strip()
    assert value == str(expected), f"{HUB_JAIL} {option}: {value!r}, hubkiln declares {expected}"


def test_bans_use_nftables(host, hardening):
    with host.sudo():
        dump = host.run("fail2ban-client -d").stdout
    assert "nftables" in dump


@pytest.mark.parametrize("jail", JAILS)
def test_the_test_host_is_not_banned(host, hardening, jail):
    """Booting and testing must not look like an attack (see docs/hardening.md)."""
    with host.sudo():
        status = host.run(f"fail2ban-client status {jail}").stdout
    assert TEST_HOST_ADDRESS not in status.split("Banned IP list:")[-1], status
