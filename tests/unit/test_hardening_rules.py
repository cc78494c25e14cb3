"""The hardening rules rendered or shipped for the guest, checked without a guest:
the firewall's cloud-metadata block, fail2ban's hub jail and filter, Lynis' profile,
the AppArmor profiles left out of the boot."""

from __future__ import annotations

import configparser
import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HARDENING = Path(__file__).resolve().parents[2] / "provision/files/hardening"
sys.path.insert(0, str(HARDENING))
import hubkiln_hardening as rules  # noqa: E402

HUB_FILTER = HARDENING / "fail2ban/filter.d/hubkiln-hub.conf"
#: A refused login in JupyterHub's access log (jupyterhub/log.py, log_request), as the
#: journal backend hands it to fail2ban: host, identifier[pid], message.
FAILED = ("hub jupyterhub[812]: [W 2026-12-01 14:02:03.456 JupyterHub log:192] 403 POST "
          "/hub/login?next=%2Fhub%2F (@{address}) 2511.30ms")


def output_chain(text: str) -> list[str]:
    """The rules of the output chain, one a line (the chain ends at its own brace)."""
    body = text.split("    chain output {\n")[1].split("\n    }\n")[0]
    return [line.strip() for line in body.splitlines()]


# ---------------------------------------------------------------- cloud metadata


def test_metadata_addresses_are_rejected_unless_root_owns_the_socket():
    chain = output_chain(rules.render_nftables(rules.check_settings({})))
    assert "policy accept;" in chain[0]
    assert ("ip daddr @metadata_v4 tcp dport != { 53 } meta skuid != 0 reject with tcp reset"
            in chain)
    assert ("ip6 daddr @metadata_v6 tcp dport != { 53 } meta skuid != 0 reject with tcp reset"
            in chain)


def test_metadata_sets_hold_each_address_in_its_family():
    text = rules.render_nftables(rules.check_settings({}))
    for address in rules.METADATA_ADDRESSES:
        version = ipaddress.ip_address(address).version
        block = text.split(f"set metadata_v{version} {{")[1].split("\n    }")[0]
        assert address in block, f"{address} missing from metadata_v{version}"
    assert "169.254.169.254" in rules.METADATA_ADDRESSES
    assert "fd00:ec2::254" in rules.METADATA_ADDRESSES


def test_the_metadata_block_does_not_depend_on_the_profile():
    opened = rules.render_nftables(rules.check_settings(
        {"extra_open_ports": [8888], "ssh_allowed_networks": ["10.0.0.0/8"]}))
    assert output_chain(opened) == output_chain(rules.render_nftables(rules.check_settings({})))


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None,
                    reason="needs nft and unshare (the build checks the ruleset the same way)")
def test_nft_accepts_the_ruleset(tmp_path):
    ruleset = tmp_path / "nftables.conf"
    ruleset.write_text(rules.render_nftables(rules.check_settings({"extra_open_ports": [8888]})))
    result = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(ruleset)],
                            capture_output=True, text=True)
    if result.returncode and "Operation not permitted" in result.stderr:
        pytest.skip("unshare --net needs root (the build runs it as root)")
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- hub login jail


def jail() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(rules.render_hub_jail())
    return parser[rules.HUB_JAIL]


def test_hub_jail_uses_the_declared_thresholds():
    section = jail()
    assert section["enabled"] == "true"
    assert section["backend"] == "systemd"
    assert section["filter"] == rules.HUB_JAIL
    assert int(section["maxretry"]) == rules.HUB_LOGIN_MAXRETRY
    assert int(section["findtime"]) == rules.HUB_LOGIN_FINDTIME
    assert int(section["bantime"]) == rules.HUB_LOGIN_BANTIME


def test_hub_jail_closes_the_front_but_not_ssh():
    section = jail()
    assert section["port"] == "80,443"
    assert set(section["protocol"].split(",")) == {"tcp", "udp"}  # UDP 443: HTTP/3
    assert "22" not in section["port"].split(",") and "ssh" not in section["port"]


def test_a_few_typos_of_a_class_behind_one_address_are_not_a_ban():
    assert rules.HUB_LOGIN_MAXRETRY >= 10
    assert rules.HUB_LOGIN_FINDTIME <= 600 and rules.HUB_LOGIN_BANTIME <= 600


def filter_regex() -> re.Pattern[str]:
    """The filter's failregex as a Python regex: fail2ban's journal prefix and <HOST>
    simplified (the build runs the real `fail2ban-regex` on the installed filter)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(HUB_FILTER)
    assert parser["Init"]["journalmatch"] == "_SYSTEMD_UNIT=jupyterhub.service"
    assert parser["Definition"]["_daemon"] == "jupyterhub"
    failregex = parser["Definition"]["failregex"].strip()
    assert failregex.startswith("^<__prefix_line>")
    pattern = (failregex.replace("<__prefix_line>", r"(?:\S+\s+)?(?:jupyterhub\[\d+\]:\s+)?")
               .replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)"))
    return re.compile(pattern)


@pytest.mark.parametrize("address", ["10.0.2.2", "2001:db8::7"])
def test_filter_takes_the_client_address_of_a_refused_login(address):
    found = filter_regex().search(FAILED.format(address=address))
    assert found and found["host"] == address


def test_filter_takes_the_last_parenthesis_not_one_in_the_query():
    line = FAILED.format(address="10.0.2.2").replace("?next=%2Fhub%2F", "?x=(@192.0.2.66)")
    found = filter_regex().search(line)
    assert found and found["host"] == "10.0.2.2"


@pytest.mark.parametrize("line", [
    # a successful login
    "hub jupyterhub[812]: [I 2026-12-01 14:02:03.456 JupyterHub log:192] 302 POST "
    "/hub/login?next= -> /hub/ (alice@10.0.2.2) 25.30ms",
    # the login page itself
    "hub jupyterhub[812]: [W 2026-12-01 14:02:03.456 JupyterHub log:192] 403 GET "
    "/hub/login (@10.0.2.2) 25.30ms",
    # another handler's message that merely looks alike
    "hub jupyterhub[812]: [W 2026-12-01 14:02:03.456 JupyterHub base:1041] Failed login "
    "for 'alice' 403 POST /hub/login (@10.0.2.2) 1ms",
    # a 403 of a student's server, not of the hub's form
    "hub jupyterhub[812]: [W 2026-12-01 14:02:03.456 JupyterHub log:192] 403 POST "
    "/user/alice/login (@10.0.2.2) 25.30ms",
])
def test_filter_ignores_other_lines(line):
    assert not filter_regex().search(line)


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed")
def test_fail2ban_itself_reads_the_filter(tmp_path):
    """With the host's fail2ban (its own common.conf beside a copy of the filter)."""
    common = Path("/etc/fail2ban/filter.d/common.conf")
    if not common.exists():
        pytest.skip("no /etc/fail2ban/filter.d/common.conf on this host")
    shutil.copy(common, tmp_path / "common.conf")
    shutil.copy(HUB_FILTER, tmp_path / HUB_FILTER.name)
    result = subprocess.run(["fail2ban-regex", "-o", "ip", FAILED.format(address="192.0.2.10"),
                             str(tmp_path / HUB_FILTER.name)], capture_output=True, text=True)
    assert result.stdout.strip() == "192.0.2.10", result.stdout + result.stderr


def test_the_command_line_prints_the_jail():
    result = subprocess.run([sys.executable, str(HARDENING / "hubkiln_hardening.py"), "hub-jail"],
                            input="{}", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == rules.render_hub_jail()


# ---------------------------------------------------------------- Lynis


def test_lynis_checks_certificates_in_hubkilns_folder_only():
    settings = [line for line in (HARDENING / "lynis/custom.prf").read_text().splitlines()
                if line and not line.startswith("#")]
    assert "ssl-certificate-paths=/etc/hubkiln/tls" in settings
    assert not [line for line in settings if line.startswith("skip-test=CRYP")]


# ------------------------------------------------- AppArmor profiles of absent programs
# Written the way Ubuntu's apparmor package writes them (/etc/apparmor.d/firefox,
# MongoDB_Compass, QtWebEngineProcess, unix-chkpwd, lsb_release).
PROFILES = {
    "browser": "abi <abi/4.0>,\ninclude <tunables/global>\n\n"
               "profile browser /{usr/lib/browser{,-esr},opt/browser}/browser{,-bin} "
               "flags=(unconfined) {\n  userns,\n  include if exists <local/browser>\n}\n",
    "spaced": 'profile "Spaced App" "/usr/lib/spaced app/Spaced App" flags=(unconfined) {\n'
              "  userns,\n}\n",
    "multiarch": "profile qtweb /usr/lib/@{multiarch}/qt{5,6}/libexec/qtweb flags=(unconfined) {\n"
                 "  userns,\n}\n",
    "chkpwd": "profile chkpwd /{,usr/}{,s}bin/chkpwd {\n  /etc/shadow r,\n}\n",
    "variable": "@{exec_path} = /usr/bin/tool /usr/local/bin/tool\n"
                "profile tool @{exec_path} {\n  @{exec_path} mr,\n}\n",
    "unnamed": "# an old-style profile\n/usr/sbin/daemon {\n  /etc/daemon.conf r,\n}\n",
    "named": "profile lsb_release {\n  /usr/bin/lsb_release r,\n}\n",
    "child": "profile outer /opt/outer/run {\n  profile inner /usr/bin/chkpwd {\n  }\n}\n",
}


def profile_tree(tmp_path: Path, programs: list[str]) -> Path:
    folder = tmp_path / "etc/apparmor.d"
    for sub in ("abstractions", "tunables", "local", "disable"):
        (folder / sub).mkdir(parents=True)
    (folder / "tunables/global").write_text("@{multiarch}=*-linux-gnu*\n")
    for name, text in PROFILES.items():
        (folder / name).write_text(text)
    for program in programs:
        (tmp_path / program.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / program.lstrip("/")).write_text("")
    return tmp_path


def test_attachments_are_read_with_quotes_flags_and_the_files_variables():
    assert rules.profile_attachments(PROFILES["spaced"]) == ["/usr/lib/spaced app/Spaced App"]
    assert rules.profile_attachments(PROFILES["variable"]) == ["/usr/bin/tool",
                                                                "/usr/local/bin/tool"]
    assert rules.profile_attachments(PROFILES["unnamed"]) == ["/usr/sbin/daemon"]
    # a profile inside another's block is not the file's attachment
    assert rules.profile_attachments(PROFILES["child"]) == ["/opt/outer/run"]


def test_a_profile_attached_by_name_only_is_always_kept():
    assert rules.profile_attachments(PROFILES["named"]) is None


def test_alternations_expand_nested_and_empty():
    assert sorted(rules.expand_braces("/{,usr/}{,s}bin/x")) == [
        "/bin/x", "/sbin/x", "/usr/bin/x", "/usr/sbin/x"]
    assert sorted(rules.expand_braces("/a{b{,c},d}")) == ["/ab", "/abc", "/ad"]
    assert rules.expand_braces("/no{brace") == ["/no{brace"]


def test_nothing_installed_disables_every_attached_profile(tmp_path):
    root = profile_tree(tmp_path, [])
    assert rules.unused_apparmor_profiles(str(root)) == [
        "browser", "child", "chkpwd", "multiarch", "spaced", "unnamed", "variable"]


def test_a_profile_whose_program_is_installed_stays_loaded(tmp_path):
    root = profile_tree(tmp_path, [
        "/opt/browser/browser-bin", "/usr/lib/spaced app/Spaced App",
        "/usr/lib/x86_64-linux-gnu/qt6/libexec/qtweb", "/usr/sbin/chkpwd",
        "/usr/local/bin/tool", "/usr/sbin/daemon", "/opt/outer/run"])
    assert rules.unused_apparmor_profiles(str(root)) == []


def test_the_command_prints_one_profile_a_line(tmp_path):
    root = profile_tree(tmp_path, ["/usr/bin/chkpwd"])
    result = subprocess.run([sys.executable, str(HARDENING / "hubkiln_hardening.py"),
                             "apparmor-unused", str(root)],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["browser", "child", "multiarch", "spaced", "unnamed",
                                     "variable"]


def test_the_hub_jail_reads_the_lines_the_hub_unit_writes():
    """The filter's journalmatch and _daemon name the unit and the journal identifier
    of the hub's lines: a start program with another name (hubkiln-hub) must not
    change them, or guessing on the login form is never banned."""
    unit = (HARDENING.parents[1] / "files/systemd/jupyterhub.service").read_text()
    filter_text = HUB_FILTER.read_text()
    identifier = re.search(r"^SyslogIdentifier=(\S+)$", unit, re.M)
    assert identifier, "jupyterhub.service sets no SyslogIdentifier"
    assert re.search(rf"^_daemon = {re.escape(identifier[1])}$", filter_text, re.M)
    assert "journalmatch = _SYSTEMD_UNIT=jupyterhub.service" in filter_text
