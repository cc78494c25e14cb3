"""SSH daemon settings as sshd itself reads them (`sshd -T`): HARDENING.md "SSH"."""

from __future__ import annotations

from typing import Any

import pytest

EXPECTED = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitemptypasswords": "no",
    "x11forwarding": "no",
    "allowagentforwarding": "no",
    "allowtcpforwarding": "no",
    "permittunnel": "no",
    "permituserenvironment": "no",
    "gatewayports": "no",
    "allowgroups": "hubkiln-admins",
    "denygroups": "hubkiln-students",
    "loglevel": "VERBOSE",
}
WEAK = ("cbc", "arcfour", "3des", "hmac-md5", "hmac-sha1", "umac-64", "diffie-hellman-group1-",
        "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1")



@pytest.fixture(scope="module")
def sshd(host: Any, hardening: dict[str, Any]) -> dict[str, str]:
    with host.sudo():
        out = host.run("sshd -T")
    assert out.rc == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


@pytest.mark.parametrize("key,value", sorted(EXPECTED.items()))
def test_sshd_setting(sshd, key, value):
    assert sshd.get(key) == value


@pytest.mark.parametrize("key,most", [("maxauthtries", 4), ("logingracetime", 60)])
def test_sshd_limit(sshd, key, most):
    assert int(sshd[key]) <= most


@pytest.mark.parametrize("key", ["ciphers", "macs", "kexalgorithms"])
def test_only_modern_algorithms(sshd, key):
    weak = [a for a in sshd[key].split(",") if any(w in a for w in WEAK)]
    assert not weak, f"{key} allows {weak}"


def test_ssh_listens_and_the_service_runs(host, hardening, journal):
    assert host.socket("tcp://0.0.0.0:22").is_listening or host.socket("tcp://:::22").is_listening
    states = host.run("systemctl is-active ssh.service ssh.socket").stdout.split()
    assert "active" in states, journal("ssh.service")
