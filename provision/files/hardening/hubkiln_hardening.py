#!/usr/bin/env python3
"""hubkiln_hardening: check the profile's hardening settings and render the firewall.

Used by provision/80-hardening.sh with the system python3 (standard library
only, Python 3.9 or later), and imported by the fast tests. Two commands read
the settings JSON (HUBKILN_HARDENING) on stdin:

    check      print `enabled=true|false` and `ptrace_scope=N`, or every
               problem naming its key (exit 2)
    json       print the checked settings as JSON (the image keeps them in
               /etc/hubkiln/hardening.json for its tests)
    nftables   print the nftables ruleset for these settings

Limits: only TCP ports are opened (besides HTTP/3 on UDP 443, which the HTTPS
front speaks); the SSH networks are checked as CIDR and normalised, nothing more.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

#: Ports that are always open to everyone: HTTP (redirects to HTTPS) and HTTPS.
WEB_PORTS = (80, 443)
SSH_PORT = 22
KEYS = {"enabled", "ssh_allowed_networks", "extra_open_ports", "ptrace_scope"}


class SettingsError(Exception):
    """Settings that cannot be applied; one problem per line."""


def check_settings(settings: Any) -> dict[str, Any]:
    """Return the settings with defaults filled in and networks normalised, or raise
    SettingsError naming every bad key."""
    if not isinstance(settings, dict):
        raise SettingsError("HUBKILN_HARDENING: expected a JSON object")
    problems = [f"{key}: unknown key" for key in sorted(set(settings) - KEYS)]
    enabled = settings.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"enabled: expected true or false, got {enabled!r}")
    networks = []
    raw_networks = settings.get("ssh_allowed_networks", ["0.0.0.0/0", "::/0"])
    if not isinstance(raw_networks, list):
        problems.append("ssh_allowed_networks: expected a list of CIDR networks")
        raw_networks = []
    for index, value in enumerate(raw_networks):
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            problems.append(f"ssh_allowed_networks[{index}]: {value!r} is not a CIDR network")
    ports = settings.get("extra_open_ports", [])
    if not isinstance(ports, list):
        problems.append("extra_open_ports: expected a list of TCP ports")
        ports = []
    for index, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append(f"extra_open_ports[{index}]: {port!r} is not a TCP port (1-65535)")
    ptrace = settings.get("ptrace_scope", 1)
    if isinstance(ptrace, bool) or ptrace not in (0, 1, 2, 3):
        problems.append(f"ptrace_scope: expected 0, 1, 2 or 3, got {ptrace!r}")
    if problems:
        raise SettingsError("\n".join(f"HUBKILN_HARDENING: {p}" for p in problems))
    extra = sorted({p for p in ports if p not in (SSH_PORT, *WEB_PORTS)})
    return {
        "enabled": enabled,
        "ssh_allowed_networks": [str(n) for n in networks],
        "extra_open_ports": extra,
        "ptrace_scope": ptrace,
    }


def _elements(networks: list[str], version: int) -> list[str]:
    return [n for n in networks if ipaddress.ip_network(n).version == version]


def render_nftables(settings: dict[str, Any]) -> str:
    """The nftables ruleset (a file for `nft -f`) of checked settings (pure).

    It replaces only its own table, so a reload keeps fail2ban's table.
    """
    lines = [
        "#!/usr/sbin/nft -f",
        "# Installed by hubkiln (provision/80-hardening.sh) from the profile's hardening",
        "# settings. Incoming: only SSH (from the admin networks), HTTP and HTTPS, plus",
        "# the profile's extra ports. Reloading replaces only this table (fail2ban keeps its own).",
        "table inet hubkiln_filter",
        "delete table inet hubkiln_filter",
        "",
        "table inet hubkiln_filter {",
    ]
    for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        elements = _elements(settings["ssh_allowed_networks"], version)
        lines.append(f"    set ssh_allowed_v{version} {{")
        lines.append(f"        type {kind}")
        lines.append("        flags interval")
        if elements:
            lines.append(f"        elements = {{ {', '.join(elements)} }}")
        lines.append("    }")
        lines.append("")
    tcp_open = ", ".join(str(p) for p in (*WEB_PORTS, *settings["extra_open_ports"]))
    lines += [
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "        ct state established,related accept",
        "        ct state invalid drop",
        '        iifname "lo" accept',
        "        # Path MTU discovery, errors and ping; neighbour discovery for IPv6.",
        "        ip protocol icmp icmp type { echo-request, destination-unreachable,"
        " time-exceeded, parameter-problem } limit rate 20/second accept",
        "        ip6 nexthdr icmpv6 icmpv6 type { echo-request, destination-unreachable,"
        " packet-too-big, time-exceeded, parameter-problem, nd-router-advert,"
        " nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query } accept",
        "        # DHCP replies (v4 and v6): the address lease of the instance.",
        "        udp sport 67 udp dport 68 accept",
        "        ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",
        f"        tcp dport {SSH_PORT} ip saddr @ssh_allowed_v4 accept",
        f"        tcp dport {SSH_PORT} ip6 saddr @ssh_allowed_v6 accept",
        f"        tcp dport {{ {tcp_open} }} accept",
        "        # HTTP/3 of the HTTPS front.",
        "        udp dport 443 accept",
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "    }",
        "",
        "    chain output {",
        "        type filter hook output priority filter; policy accept;",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("check", "json", "nftables"):
        print("usage: hubkiln_hardening.py check|json|nftables < settings.json",
              file=sys.stderr)
        return 64
    text = sys.stdin.read().strip() or "{}"
    try:
        settings = check_settings(json.loads(text))
    except json.JSONDecodeError as error:
        print(f"HUBKILN_HARDENING: not JSON: {error}", file=sys.stderr)
        return 2
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    if argv[1] == "check":
        print(f"enabled={'true' if settings['enabled'] else 'false'}")
        print(f"ptrace_scope={settings['ptrace_scope']}")
    elif argv[1] == "json":
        print(json.dumps(settings, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_nftables(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
