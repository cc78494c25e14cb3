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


#: The host key types cloud-init makes at first boot
#: (provision/files/hardening/cloud/50-hubkiln-ssh-host-keys.cfg): no RSA key.
HOST_KEY_TYPES = {"ed25519", "ecdsa"}


def test_the_host_keys_are_ed25519_and_ecdsa_made_at_first_boot(host, hardening):
    with host.sudo():
        keys = host.run("ls /etc/ssh/ | sed -n 's/^ssh_host_\\(.*\\)_key$/\\1/p'").stdout.split()
        offered = host.run("sshd -T | sed -n 's/^hostkey //p'").stdout.split()
        fingerprints = host.run("for key in /etc/ssh/ssh_host_*_key.pub; do "
                                "ssh-keygen -l -f \"$key\"; done").stdout
    assert set(keys) == HOST_KEY_TYPES
    assert offered == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key"]
    assert "(ED25519)" in fingerprints and "(ECDSA)" in fingerprints
