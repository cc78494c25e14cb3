"""The hub's units are enabled and running, ordered without waiting for the network."""

from __future__ import annotations

import pytest

UNITS = ("hubkiln-firstboot.service", "jupyterhub-proxy.service", "jupyterhub.service",
         "hubkiln-front.service")
LONG_RUNNING = ("jupyterhub-proxy.service", "jupyterhub.service", "hubkiln-front.service")


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_enabled(host, journal, unit):
    assert host.service(unit).is_enabled, f"{unit} is not enabled" + journal(unit)


@pytest.mark.parametrize("unit", LONG_RUNNING)
def test_unit_is_running(host, journal, unit):
    state = host.run(f"systemctl is-active {unit}").stdout.strip()
    assert state == "active", f"{unit} is {state}" + journal(unit)


def test_firstboot_ran_and_succeeded(host, journal):
    result = host.run("systemctl show -p ActiveState -p Result hubkiln-firstboot.service")
    shown = dict(line.split("=", 1) for line in result.stdout.split())
    state, outcome = shown["ActiveState"], shown["Result"]
    assert (state, outcome) == ("active", "success"), (
        f"hubkiln-firstboot is {state}/{outcome}" + journal("hubkiln-firstboot.service"))


@pytest.mark.parametrize("unit", UNITS)
def test_unit_does_not_wait_for_the_network(host, unit):
    """The hub must serve with no internet: nothing of ours waits for network-online."""
    after = host.run(f"systemctl show -P After {unit}").stdout.split()
    assert "network-online.target" not in after
    assert not {"cloud-config.service", "cloud-final.service"} & set(after)


def test_package_caddy_service_is_masked(host):
    assert host.run("systemctl is-enabled caddy.service").stdout.strip() == "masked"


@pytest.mark.parametrize(("unit", "prop", "expected"), [
    ("jupyterhub.service", "OOMScoreAdjust", "-1000"),
    ("jupyterhub.service", "Restart", "always"),
    # fail2ban's hub jail finds failed logins by this name (filter.d/hubkiln-hub.conf)
    ("jupyterhub.service", "SyslogIdentifier", "jupyterhub"),
    ("jupyterhub-proxy.service", "Restart", "always"),
    ("jupyterhub-proxy.service", "DynamicUser", "yes"),
    ("hubkiln-front.service", "User", "caddy"),
])
def test_unit_property(host, unit, prop, expected):
    assert host.run(f"systemctl show -P {prop} {unit}").stdout.strip() == expected


@pytest.mark.parametrize(("address", "port"), [
    ("127.0.0.1", 8081),  # hub
    ("127.0.0.1", 8000),  # proxy, public side (behind the front)
    ("127.0.0.1", 8001),  # proxy API
])
def test_hub_and_proxy_listen_on_localhost_only(host, journal, address, port):
    sockets = host.run("ss -Htln").stdout.split("\n")
    local = [line.split()[3] for line in sockets if line.strip()]
    bound = [a for a in local if a.rsplit(":", 1)[1] == str(port)]
    assert bound == [f"{address}:{port}"], f"port {port} is bound to {bound}" + journal(
        "jupyterhub.service")


@pytest.mark.parametrize("port", [80, 443])
def test_front_listens_on_every_address(host, journal, port):
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening or host.socket(
        f"tcp://:::{port}").is_listening, journal("hubkiln-front.service")


@pytest.mark.needs("boot")  # timesyncd does not run in containers (ConditionVirtualization)
def test_the_clock_is_kept_by_timesyncd(host, journal):
    """TLS, ACME and OAuth/LTI tokens need a right clock; offline it waits quietly."""
    unit = "systemd-timesyncd.service"
    assert host.service(unit).is_enabled, journal(unit)
    state = host.run(f"systemctl is-active {unit}").stdout.strip()
    assert state == "active", f"{unit} is {state}" + journal(unit)
