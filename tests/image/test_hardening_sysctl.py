"""Kernel and network sysctls of HARDENING.md, live and persisted (sysctl.d)."""

from __future__ import annotations

import pytest

#: Proven in the VM only (the image's own kernel): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("kernel")

SYSCTLS = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.default.secure_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "kernel.randomize_va_space": "2",
    "fs.suid_dumpable": "0",
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.sysrq": "0",
    "kernel.unprivileged_bpf_disabled": "1",
    "net.core.bpf_jit_harden": "2",
}



@pytest.mark.parametrize("name,expected", sorted(SYSCTLS.items()))
def test_sysctl_has_the_hardened_value(host, hardening, name, expected):
    assert host.run(f"sysctl -n {name}").stdout.strip() == expected


def test_ptrace_scope_is_the_profiles(host, hardening):
    value = host.run("sysctl -n kernel.yama.ptrace_scope").stdout.strip()
    assert value == str(hardening["ptrace_scope"])


def last_setter(cat_config: str, name: str) -> str | None:
    """The file that sets `name` last in `systemd-analyze cat-config sysctl.d` output (pure)."""
    current, last = None, None
    for line in cat_config.splitlines():
        if line.startswith("# /"):
            current = line[2:].strip()
        elif line.replace(" ", "").startswith(f"{name}="):
            last = current
    return last


def test_last_setter_reads_cat_config_output():
    text = "# /usr/lib/sysctl.d/10.conf\na.b = 1\n# /etc/sysctl.d/60-hubkiln.conf\na.b=2\n"
    assert last_setter(text, "a.b") == "/etc/sysctl.d/60-hubkiln.conf"
    assert last_setter(text, "c.d") is None


@pytest.mark.parametrize("name", ["kernel.yama.ptrace_scope", "kernel.kptr_restrict",
                                  "net.ipv4.conf.all.rp_filter", "fs.protected_regular"])
def test_sysctl_is_persisted_in_sysctl_d(host, hardening, name):
    """The file that wins at boot (the last that sets the key) is hubkiln's."""
    out = host.run("systemd-analyze cat-config sysctl.d").stdout
    assert "hubkiln" in (last_setter(out, name) or ""), f"{name}: {last_setter(out, name)}"


def test_no_core_dumps(host, hardening):
    limits = host.run("cat /etc/security/limits.d/*.conf").stdout
    assert any(line.split()[:3] == ["*", "hard", "core"] and line.split()[3] == "0"
               for line in limits.splitlines() if line.strip() and not line.startswith("#"))
    assert host.run("systemctl show -p DefaultLimitCORE").stdout.strip() == "DefaultLimitCORE=0"
