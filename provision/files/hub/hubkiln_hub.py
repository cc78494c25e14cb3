"""hubkiln_hub: the hub's settings: read /etc/hubkiln/hub.d/*.yaml, check them, merge them.

The rules of the settings that need more than the schema: the one module for them,
used by /etc/hubkiln/jupyterhub_config.py (the hub reads its settings at start),
`hubkiln-apply-launch` (checks the launch settings, writes the `50-launch.yaml`
drop-in), the build (`provision/50-hub-config.sh` checks and installs the profile's
drop-in `00-profile.yaml`; hubkiln.config loads this file to check profiles and
launch files) and the tests. The shapes, defaults and messages of every key are in
settings.schema.yaml (`$defs/hub`), checked by hubkiln_schema.

Rules: drop-ins are read in lexical order; mappings merge, lists and values
replace, except `admins`, which accumulate (the image's admins plus the launch
admins); a key no drop-in sets has the schema's default. Every problem of every
file is reported at once, naming the file and the key.

Command line (for the build and for admins):
    python -m hubkiln_hub check [DIR]       check the drop-ins, print the merged settings
    python -m hubkiln_hub check-baked [DIR] the same without the checks that need launch settings
    python -m hubkiln_hub check-dropin FILE check one baked drop-in (no OAuth client in it)
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from hubkiln_schema import YamlError, check, defaults, definition, format_keypath, pattern, show
from hubkiln_schema import read_yaml as read_yaml_text

SETTINGS_DIR = Path("/etc/hubkiln/hub.d")
PROFILE_DROPIN = "00-profile.yaml"
LAUNCH_DROPIN = "50-launch.yaml"
#: The login provider's own root certificate (launch setting oauth.ca_certificate),
#: written by hubkiln-apply-launch; the hub trusts it for the provider's endpoints only.
LOGIN_CA_ROOT = Path("/etc/hubkiln/tls/login-ca-root.crt")

PASSWORD_AUTHENTICATORS = ("firstuse", "native")
OAUTH_AUTHENTICATORS = ("github", "google", "generic-oauth", "lti13")
#: What each login provider needs in `oauth` (the one table: the image checks its merged
#: settings with it, the build a launch file against its profile).
OAUTH_NEEDS = {
    "github": ("client_id", "client_secret"),
    "google": ("client_id", "client_secret"),
    "generic-oauth": ("client_id", "client_secret", "authorize_url", "token_url",
                      "userdata_url"),
    "lti13": ("client_id", "authorize_url", "issuer", "jwks_endpoint"),
}

#: Unix account names (the user names of the password logins).
UNIX_NAME = pattern("unix_name")
#: The shape of an IANA time zone name (zoneinfo then says whether it is known).
ZONE_NAME = re.compile(definition("class_schedule")["properties"]["timezone"]["pattern"])
#: Names that must never become a student or admin account: system users and
#: groups of Debian/Ubuntu images (a user's own group gets the same name, so a
#: student called `admin` or `sudo` would join that group), cloud default users
#: and the hub's own service names.
RESERVED_NAMES = frozenset({
    # base-passwd users and groups
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "adm", "tty",
    "disk", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio",
    "dip", "operator", "src", "shadow", "utmp", "video", "sasl", "plugdev", "staff", "users",
    # groups with privileges on Ubuntu/Debian or common distributions
    "admin", "wheel", "lxd", "docker", "kvm", "libvirt", "lpadmin", "sambashare", "netdev",
    "input", "render", "sgx", "crontab", "ssl-cert", "messagebus", "syslog", "uuidd",
    "tcpdump", "tss", "sshd", "polkitd", "landscape", "pollinate", "fwupd-refresh", "usbmux",
    "dnsmasq", "chrony", "ntp", "postfix", "postdrop", "rdma", "ubuntu-advantage",
    # cloud default users
    "ubuntu", "debian", "cloud-user", "ec2-user", "azureuser", "centos", "fedora",
    # the hub's own services
    "hub", "hubkiln", "jupyter", "jupyterhub",
})
#: Prefixes of names reserved for system accounts and hubkiln's own.
RESERVED_PREFIXES = ("hubkiln-", "systemd-")
#: The ending of admins' SSH accounts (operator_name): no hub user may have it.
OPERATOR_SUFFIX = "-admin"

#: The hub's settings when no drop-in sets anything (the schema's defaults).
DEFAULTS: dict[str, Any] = defaults("hub")
#: The week's days as class_schedule names them (Monday first, as date.weekday counts).
DAYS = tuple(definition("class_schedule")["properties"]["sessions"]["items"]["properties"]
             ["days"]["items"]["enum"])
#: What a class_schedule leaves out (the schema's defaults). timezone None: the
#: machine's own zone.
SCHEDULE_DEFAULTS: dict[str, Any] = {
    key: node["default"] for key, node in definition("class_schedule")["properties"].items()
    if "default" in node}
#: How long into its session a pre-started server must survive the idle culler, for
#: the students who arrive late (prestart_culling_problem).
LATE_ARRIVAL_MINUTES = 15


class SettingsError(Exception):
    """Settings that cannot be used; the message lists every problem, one per line."""


# ---------------------------------------------------------------- checks


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not a time zone this machine knows, or None (the one rule: the build
    checks launch files with it, the image its launch settings)."""
    if not ZONE_NAME.search(name):
        return f"{show(name)} is not a time zone name like Europe/Berlin"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else "an IANA name like Europe/Berlin"
        return f"{show(name)} is not a known time zone ({hint})"
    return None


def value_problems(data: dict[str, Any]) -> list[str]:
    """What the schema cannot check of one document (a drop-in or the launch settings):
    that the machine knows the class schedule's time zone."""
    schedule = data.get("class_schedule")
    zone = schedule.get("timezone") if isinstance(schedule, dict) else None
    problem = time_zone_problem(zone) if isinstance(zone, str) else None
    return [f"class_schedule.timezone: {problem}"] if problem else []


def document_problems(data: Any, name: str) -> list[str]:
    """Every problem of one `hub` drop-in or `launch` document, as 'key.path: problem'."""
    problems = [f"{format_keypath(path)}: {message}" for path, message in check(data, name)]
    return problems or value_problems(data)


def login_name_problems(authenticator: str, key: str, names: list[Any]) -> list[str]:
    """With a password login, hub user names are Unix account names (the one rule: the
    image checks its merged settings, the build a profile and a launch file with it)."""
    if authenticator not in PASSWORD_AUTHENTICATORS:
        return []
    bad = [n for n in names if isinstance(n, str) and not UNIX_NAME.search(n)]
    if not bad:
        return []
    return [f"{key}: {', '.join(map(show, bad))}: with the '{authenticator}' login, names "
            "must be Unix user names (a-z, digits, _ and -, at most 32)"]


def oauth_problems(authenticator: str, oauth: dict[str, Any] | None) -> list[str]:
    """The keys of `oauth` that the login `authenticator` needs and does not have."""
    missing = [key for key in OAUTH_NEEDS.get(authenticator, ()) if not (oauth or {}).get(key)]
    if not missing:
        return []
    return [f"oauth: the '{authenticator}' login needs oauth.{', oauth.'.join(missing)}"]


def check_consistency(settings: dict[str, Any]) -> list[str]:
    """Problems that only show once all the drop-ins are merged."""
    problems = []
    auth = settings["authenticator"]
    for key in ("admins", "users"):
        problems += login_name_problems(auth, key, settings[key])
    for key, names_key in (("admin_password_hashes", "admins"),
                           ("enrolment_code_hashes", "users")):
        stray = sorted(set(settings[key]) - set(settings[names_key]))
        if stray:
            problems.append(f"{key}: {', '.join(map(show, stray))} not in {names_key}")
    problems += [f"{problem}: give them in the launch settings (/etc/hubkiln/launch.yaml), "
                 "then run hubkiln-apply-launch"
                 for problem in oauth_problems(auth, settings["oauth"])]
    if auth in OAUTH_AUTHENTICATORS and not settings["domain"]:
        problems.append(f"domain: the '{auth}' login needs the hub's domain name (launch setting "
                        "'domain'): the identity provider sends users back to "
                        "https://DOMAIN/hub/oauth_callback")
    culled = prestart_culling_problem(settings["class_schedule"], settings["idle_culling"])
    if culled:
        problems.append(f"class_schedule.prestart_minutes: {culled}")
    return problems


def with_schedule_defaults(schedule: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checked class_schedule with SCHEDULE_DEFAULTS for the keys it leaves out, in
    the documented order (the defaults' keys, then `sessions`); None stays None."""
    if schedule is None:
        return None
    return {**SCHEDULE_DEFAULTS, **copy.deepcopy(schedule)}


def prestart_culling_problem(schedule: dict[str, Any] | None,
                             idle_culling: dict[str, Any]) -> str | None:
    """Why the idle culler would stop pre-started servers before the late students of
    a class arrive, or None (the one rule: the build checks a launch file against its
    profile with it, the image its merged settings). A pre-started server is idle from
    `prestart_minutes` before its class; the culler stops it `timeout_minutes` after
    that, which must leave LATE_ARRIVAL_MINUTES of the class."""
    if not schedule or not idle_culling.get("enabled"):
        return None
    lead = with_schedule_defaults(schedule)["prestart_minutes"]
    timeout = idle_culling["timeout_minutes"]
    if timeout >= lead + LATE_ARRIVAL_MINUTES:
        return None
    when = ("before its class starts" if timeout <= lead
            else f"{timeout - lead} minute(s) into its class")
    fix = (f"pre-start at most {timeout - LATE_ARRIVAL_MINUTES} minutes before"
           if timeout > LATE_ARRIVAL_MINUTES else
           f"build the image with hub.idle_culling.timeout_minutes of at least "
           f"{lead + LATE_ARRIVAL_MINUTES}")
    return (f"{lead} would let the idle culler (after {timeout} idle minutes, the image's "
            f"hub.idle_culling.timeout_minutes) stop a pre-started server {when}; it must "
            f"last {LATE_ARRIVAL_MINUTES} minutes into the class for late arrivals: {fix}")


#: How often a student's server tells the hub it is in use, and how often the hub
#: reads the proxy's record of each server's traffic (JupyterHub's defaults: 300 s, 60 s).
ACTIVITY_REPORT_SECONDS = 300
PROXY_POLL_SECONDS = 60


def activity_intervals(idle_culling: dict[str, Any]) -> dict[str, int]:
    """How often activity reaches the hub: `report` (JUPYTERHUB_ACTIVITY_INTERVAL, the
    server's own reports: its API, its kernels) and `proxy_poll` (last_activity_interval,
    the proxy's traffic), in seconds. The culler stops a server whose last activity the
    hub knows is older than the timeout, so what the hub knows must be much fresher than
    that: at most a sixth of the timeout old, never more than JupyterHub's defaults, and
    not polled more often than every 10 s. (The culler itself checks every half timeout:
    jupyterhub-idle-culler's default.)"""
    if not idle_culling.get("enabled"):
        return {"report": ACTIVITY_REPORT_SECONDS, "proxy_poll": PROXY_POLL_SECONDS}
    sixth = idle_culling["timeout_minutes"] * 60 // 6
    return {"report": max(10, min(ACTIVITY_REPORT_SECONDS, sixth)),
            "proxy_poll": max(10, min(PROXY_POLL_SECONDS, sixth))}


# ---------------------------------------------------------------- merging


def merge(base: dict[str, Any], over: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """`base` updated with `over`: mappings merge, lists and values replace; top-level
    `admins` accumulate."""
    result = copy.deepcopy(base)
    for key, value in over.items():
        if top and key == "admins":
            result[key] = list(dict.fromkeys([*result.get(key, []), *value]))
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value, top=False)
        else:
            result[key] = copy.deepcopy(value)
    return result


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` (strict: no key twice); SettingsError naming the file
    and the line when it cannot be read."""
    try:
        return read_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except OSError as error:
        raise SettingsError(f"{path}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not valid YAML: it is not UTF-8 text") from None
    except YamlError as error:
        raise SettingsError(str(error)) from None


def load_settings(directory: Path = SETTINGS_DIR, *, skip: tuple[str, ...] = (),
                  consistent: bool = True) -> dict[str, Any]:
    """The defaults updated with every `directory/*.yaml` (except `skip`), in lexical order.

    Raise SettingsError listing every problem of every file. `consistent=False`
    skips the checks that need the launch settings (used before they are applied).
    """
    settings = copy.deepcopy(DEFAULTS)
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml"), key=lambda p: p.name):
        if path.name in skip:
            continue
        try:
            data = read_yaml(path)
        except SettingsError as error:
            problems.append(str(error))
            continue
        if data is None:
            continue
        found = document_problems(data, "hub")
        problems += [f"{path}: {problem}" for problem in found]
        if not found:
            settings = merge(settings, data)
    if not problems and consistent:
        problems += [f"{directory} (merged): {p}" for p in check_consistency(settings)]
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def dropin_problems(path: Path) -> list[str]:
    """Problems of a drop-in that is baked into the image (the profile's): besides its
    shape, it must not hold an OAuth client, which is given at launch only."""
    try:
        data = read_yaml(path)
    except SettingsError as error:
        return [str(error)]
    problems = document_problems(data if data is not None else {}, "hub")
    if not problems and isinstance(data, dict) and data.get("oauth"):
        problems.append("oauth: OAuth client settings are given at launch only, never baked")
    return [f"{path}: {p}" for p in problems]


# ---------------------------------------------------------------- names


def system_name_problem(name: str) -> str | None:
    """Why `name` may never be an account hubkiln makes (system users and groups,
    hubkiln's own prefixes), or None; reserved_name_problem adds the hub users' rules."""
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return f"'{name}' is reserved for the system; choose another name"
    return None


def reserved_name_problem(name: str) -> str | None:
    """Why `name` may never be a hub account (the one rule: the build checks profiles and
    launch files with it, the image checks launch settings and account creation), or None.
    Existing accounts and groups of an image are refused where they are known: by
    hubkiln-accounts, which never takes over a name it did not register."""
    problem = system_name_problem(name)
    if problem:
        return problem
    if name.endswith(OPERATOR_SUFFIX):
        return (f"'{name}' ends with '{OPERATOR_SUFFIX}', which names the admins' SSH "
                "accounts; choose another name")
    return None


def account_name_problem(hub_name: str) -> str | None:
    """Why a hub user name may never be used, or None: its Unix account's name is
    reserved (the one rule for every list of names: the build's profile and launch
    file, the image's launch settings and account creation)."""
    return reserved_name_problem(unix_name(hub_name))


def operator_name(hub_name: str) -> str:
    """The Unix account an admin uses over SSH, with sudo: never the account their hub
    server runs as (a server can write its own home, and so the shell start-up files
    an SSH login of the same account would run). `teacher` -> `teacher-admin`."""
    unix = unix_name(hub_name)
    if len(unix) + len(OPERATOR_SUFFIX) <= 32:
        return unix + OPERATOR_SUFFIX
    digest = hashlib.sha256(hub_name.encode()).hexdigest()[:8]
    return f"{unix[:32 - len(OPERATOR_SUFFIX) - 9]}-{digest}{OPERATOR_SUFFIX}"


def unix_name(hub_name: str) -> str:
    """The Unix account of a hub user: the same name when it is a valid Unix name,
    otherwise a readable, stable one (`alice-example-org-1a2b3c4d` for alice@example.org)."""
    if UNIX_NAME.fullmatch(hub_name):
        return hub_name
    base = re.sub(r"[^a-z0-9]+", "-", hub_name.lower()).strip("-")[:20].rstrip("-")
    if not base or not base[0].isalpha():
        base = ("u" + base)[:20]
    return f"{base}-{hashlib.sha256(hub_name.encode()).hexdigest()[:8]}"


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command in ("check", "check-baked"):
            settings = load_settings(Path(argv[1]) if len(argv) > 1 else SETTINGS_DIR,
                                     consistent=command == "check")
            hidden = {**settings, "oauth": "(hidden)" if settings["oauth"] else None}
            print(yaml.safe_dump(hidden, sort_keys=False), end="")
        elif command == "check-dropin" and len(argv) == 2:
            problems = dropin_problems(Path(argv[1]))
            if problems:
                raise SettingsError("\n".join(problems))
        else:
            print(__doc__.split("Command line")[1], file=sys.stderr)
            return 2
    except SettingsError as error:
        print(f"hubkiln settings error:\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
