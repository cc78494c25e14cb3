#!/usr/bin/env python3
"""hubkiln_hardening: check the profile's hardening settings and render the firewall.

Used by provision/80-hardening.sh with the system python3 (standard library
only, Python 3.9 or later), and imported by the fast tests. Each command reads
the settings JSON (HUBKILN_HARDENING) on stdin:

    check      print `enabled=true|false` and `ptrace_scope=N`, or every
               problem naming its key (exit 2)
    json       print the checked settings as JSON (the image keeps them in
               /etc/hubkiln/hardening.json for its tests)
    nftables   print the nftables ruleset for these settings
    hub-jail   print fail2ban's hubkiln-hub jail (failed hub logins; the
               thresholds below, not settings)

and one command that reads the tree instead:

    apparmor-unused ROOT   print the AppArmor profiles under ROOT/etc/apparmor.d
               that attach only to programs ROOT does not have (Ubuntu's apparmor
               package ships some 90 for desktop programs; loading them all cost
               24 s of an emulated boot). The build disables them in
               /etc/apparmor.d/disable/, the standard switch: a package that
               installs the program later gets its profile back with one symlink
               removed, and every other profile stays loaded.

The image tests import the constants below as the expected values.

Limits: only TCP ports are opened (besides HTTP/3 on UDP 443, which the HTTPS
front speaks); the SSH networks are checked as CIDR and normalised, nothing more.
The metadata block covers TCP only (every metadata API is HTTP over TCP); UDP
to those addresses (DNS, DHCP and NTP on Google Cloud) stays open to everyone.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import sys
from typing import Any

#: Ports that are always open to everyone: HTTP (redirects to HTTPS) and HTTPS.
WEB_PORTS = (80, 443)
SSH_PORT = 22
KEYS = {"enabled", "ssh_allowed_networks", "extra_open_ports", "ptrace_scope"}

#: Cloud metadata and agent endpoints that hand out instance credentials and the
#: user data (the launch settings: admins, roster, a TLS key): only root (cloud-init,
#: the clouds' agents) may open TCP connections to them. 169.254.169.254: AWS, Google
#: Cloud, Azure IMDS, OpenStack; fd00:ec2::254: AWS over IPv6; 168.63.129.16: Azure's
#: WireServer (its own agent allows only root there too).
METADATA_ADDRESSES = ("169.254.169.254", "168.63.129.16", "fd00:ec2::254")
#: TCP ports on those addresses open to everyone: DNS (Google Cloud's and Azure's
#: resolvers are there; DNS falls back to TCP for long answers).
METADATA_OPEN_TCP_PORTS = (53,)

#: fail2ban's jail for failed hub logins (the hub's access log in the journal).
#: A class behind one NAT shares one address: 10 failures in 10 minutes is a few
#: typos each for several students, far below a guessing rate; a ban lasts 10
#: minutes, so a locked-out class waits one break, not a lesson.
HUB_JAIL = "hubkiln-hub"
HUB_LOGIN_MAXRETRY = 10
HUB_LOGIN_FINDTIME = 600  # seconds
HUB_LOGIN_BANTIME = 600  # seconds
#: What a ban closes: the HTTPS front (80, 443; UDP 443 is its HTTP/3). SSH stays
#: open, so an admin behind the same NAT can still log in and unban.
HUB_JAIL_PORTS = WEB_PORTS


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


def _metadata_rules() -> list[str]:
    """Output rules: TCP to the metadata addresses is reset unless root owns the socket.

    `meta skuid` needs a full socket: packets without one (the kernel's resets and
    ICMP errors, TIME_WAIT acknowledgements) carry nothing a user chose and pass.
    The output hook also sees traffic to local addresses (through `lo`)."""
    open_ports = ", ".join(str(p) for p in METADATA_OPEN_TCP_PORTS)
    rules = []
    for version, match in ((4, "ip daddr"), (6, "ip6 daddr")):
        rules.append(f"        {match} @metadata_v{version} tcp dport != {{ {open_ports} }}"
                     " meta skuid != 0 reject with tcp reset")
    return rules


def render_nftables(settings: dict[str, Any]) -> str:
    """The nftables ruleset (a file for `nft -f`) of checked settings (pure).

    It replaces only its own table, so a reload keeps fail2ban's table.
    """
    lines = [
        "#!/usr/sbin/nft -f",
        "# Installed by hubkiln (provision/80-hardening.sh) from the profile's hardening",
        "# settings. Incoming: only SSH (from the admin networks), HTTP and HTTPS, plus",
        "# the profile's extra ports. Outgoing: cloud metadata over TCP for root only.",
        "# Reloading replaces only this table (fail2ban keeps its own).",
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
    for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        addresses = [a for a in METADATA_ADDRESSES if ipaddress.ip_address(a).version == version]
        lines.append(f"    set metadata_v{version} {{")
        lines.append(f"        type {kind}")
        lines.append(f"        elements = {{ {', '.join(addresses)} }}")
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
        "        # Cloud metadata (instance credentials, the launch settings): root only.",
        *_metadata_rules(),
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_hub_jail() -> str:
    """fail2ban's jail for failed hub logins (a file for /etc/fail2ban/jail.d/, pure).

    The filter is files/hardening/fail2ban/filter.d/hubkiln-hub.conf; the ban is
    the nftables action of jail.local's banaction, on the front's ports, TCP and UDP."""
    ports = ",".join(str(p) for p in HUB_JAIL_PORTS)
    return "\n".join([
        "# Installed by hubkiln (provision/80-hardening.sh), rendered by hubkiln_hardening.py:",
        "# bans an address after repeated failed logins on the hub's form, on the HTTPS",
        "# front's ports only (SSH stays open). See docs/hardening.md.",
        f"[{HUB_JAIL}]",
        "enabled = true",
        "backend = systemd",
        f"filter = {HUB_JAIL}",
        f"port = {ports}",
        "protocol = tcp,udp",
        f"maxretry = {HUB_LOGIN_MAXRETRY}",
        f"findtime = {HUB_LOGIN_FINDTIME}",
        f"bantime = {HUB_LOGIN_BANTIME}",
    ]) + "\n"


# ---------------------------------------------------------------- AppArmor profiles
#: `profile NAME ATTACHMENT [flags=(...)] {` and the unnamed `ATTACHMENT [flags] {`.
_NAME = r'(?:"[^"]*"|\S+)'
_PROFILE_LINE = re.compile(
    rf'^\s*(?:profile\s+{_NAME}\s+)?(?:"(?P<quoted>/[^"]*)"|(?P<path>[/@]\S*))'
    r"(?:\s+flags=\([^)]*\))?\s+\{")
_NAMED_ONLY_LINE = re.compile(rf"^\s*profile\s+{_NAME}\s*(?:flags=\([^)]*\))?\s*\{{")
_VARIABLE_LINE = re.compile(r"^\s*@\{(?P<name>\w+)\}\s*\+?=\s*(?P<values>.+?)\s*$")


def profile_attachments(text: str) -> list[str] | None:
    """The executable paths the top-level profiles of a profile file attach to, with
    the file's own @{variables} put in; None if a profile attaches by name only (it
    is entered from another profile, so it is needed whatever is installed)."""
    variables: dict[str, list[str]] = {}
    attachments: list[str] = []
    depth = 0
    for line in text.splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#include") else ""
        if depth == 0:
            if found := _VARIABLE_LINE.match(code):
                variables.setdefault(found["name"], []).extend(found["values"].split())
            elif _NAMED_ONLY_LINE.match(code):
                return None
            elif found := _PROFILE_LINE.match(code):
                attachments.extend(expand_variables(found["quoted"] or found["path"],
                                                    variables))
        # Alternations and @{variables} are balanced on their line: only a block's
        # own brace changes the depth.
        depth = max(depth + code.count("{") - code.count("}"), 0)
    return attachments


def expand_variables(pattern: str, variables: dict[str, list[str]]) -> list[str]:
    """`pattern` once for each value of each @{variable} in it (unknown ones left)."""
    found = re.search(r"@\{(\w+)\}", pattern)
    if not found or found[1] not in variables:
        return [pattern]
    return [expanded for value in variables[found[1]]
            for expanded in expand_variables(
                pattern[:found.start()] + value + pattern[found.end():], variables)]


def expand_braces(pattern: str) -> list[str]:
    """AppArmor's alternations: `/{usr/,}bin/{a,b}` is four paths (nested too)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, begun = 0, [], start + 1
    for index in range(start, len(pattern)):
        if pattern[index] == "{":
            depth += 1
        elif pattern[index] == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[begun:index])
                head, tail = pattern[:start], pattern[index + 1:]
                return [expanded for part in parts for expanded in expand_braces(
                    head + part + tail)]
        elif pattern[index] == "," and depth == 1:
            parts.append(pattern[begun:index])
            begun = index + 1
    return [pattern]  # unbalanced: taken literally


def attachment_exists(root: str, pattern: str) -> bool:
    """Whether any file under `root` matches an attachment (AppArmor globs: `*`,
    `**`, `?`, `[...]`, alternations). A @{variable} the file does not define (such
    as @{multiarch} of tunables/global) matches any one path component."""
    for path in expand_braces(re.sub(r"@\{\w+\}", "*", pattern)):
        path = re.sub(r"\*\*+", "**", path)
        if glob.glob(os.path.join(root, path.lstrip("/")), recursive=True):
            return True
    return False


def unused_apparmor_profiles(root: str) -> list[str]:
    """The profile files under ROOT/etc/apparmor.d whose every attachment is absent."""
    folder = os.path.join(root, "etc/apparmor.d")
    unused = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name.startswith(".") or name.endswith("~"):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            attachments = profile_attachments(handle.read())
        if attachments and not any(attachment_exists(root, a) for a in attachments):
            unused.append(name)
    return unused


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "apparmor-unused":
        print("\n".join(unused_apparmor_profiles(argv[2])))
        return 0
    if len(argv) != 2 or argv[1] not in ("check", "json", "nftables", "hub-jail"):
        print("usage: hubkiln_hardening.py check|json|nftables|hub-jail < settings.json",
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
    elif argv[1] == "hub-jail":
        sys.stdout.write(render_hub_jail())
    else:
        sys.stdout.write(render_nftables(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
