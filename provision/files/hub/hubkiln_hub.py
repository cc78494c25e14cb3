"""hubkiln's hub settings: read /etc/hubkiln/hub.d/*.yaml, check them, merge them.

One module shared by the three places that need the same rules:
/etc/hubkiln/jupyterhub_config.py (the hub reads its settings at start),
`hubkiln-apply-launch` (checks the launch settings and writes the
`50-launch.yaml` drop-in and the HTTPS front's Caddyfile), and the build
(`provision/50-hub-config.sh` writes `00-profile.yaml` with `profile-yaml`).
Installed into the hub's venv; standard library and PyYAML only.

Rules: drop-ins are read in lexical order; mappings merge, lists and values
replace, except `admins`, which accumulate (the image's admins plus the launch
admins). Every problem of every file is reported at once, naming the file and
the key. Limits: no schema library (the checks are the small table below);
users are only checked for their shape here (existing system accounts are
refused by hubkiln-apply-launch and hubkiln-prepare-user).

Command line (for the build and for admins):
    python -m hubkiln_hub check [DIR]       check the drop-ins, print the merged settings
    python -m hubkiln_hub check-baked [DIR] the same without the checks that need launch settings
    python -m hubkiln_hub profile-yaml      JSON on stdin -> checked 00-profile.yaml on stdout
    python -m hubkiln_hub caddyfile self-signed           print a front config (build check)
    python -m hubkiln_hub caddyfile acme|acme-issued DOMAIN
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml

SETTINGS_DIR = Path("/etc/hubkiln/hub.d")
PROFILE_DROPIN = "00-profile.yaml"
LAUNCH_DROPIN = "50-launch.yaml"
TLS_DIR = Path("/etc/hubkiln/tls")
SELF_SIGNED_CERT = TLS_DIR / "self-signed.crt"
SELF_SIGNED_KEY = TLS_DIR / "self-signed.key"
PROVIDED_CERT = TLS_DIR / "provided.crt"
PROVIDED_KEY = TLS_DIR / "provided.key"
#: The root certificate of the launch's own ACME CA (acme_ca_root), when given.
ACME_CA_ROOT = TLS_DIR / "acme-ca-root.crt"
#: Caddy's storage (ACME account key, certificates), beside the homes: on the data
#: disk when there is one, so next term's instance reuses the certificate.
CADDY_STORAGE = Path("/home/.hubkiln/caddy")
#: The ACME CA when the launch names none (acme_ca).
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: Where configurable-http-proxy serves the hub and the students' servers.
PROXY_PUBLIC = "127.0.0.1:8000"

PASSWORD_AUTHENTICATORS = ("firstuse", "native")
OAUTH_AUTHENTICATORS = ("github", "google", "generic-oauth", "lti13")
AUTHENTICATORS = PASSWORD_AUTHENTICATORS + OAUTH_AUTHENTICATORS

#: Unix account names (also the hub user names of password authenticators).
UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Hub user names in general: lower case, no spaces or slashes (OAuth names may be e-mails).
HUB_NAME = re.compile(r"[a-z0-9_][a-z0-9._@+-]{0,99}")
SIZE = re.compile(r"[0-9]+(\.[0-9]+)?[KMGT]")
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"(?=.{{1,253}}\Z)({LABEL}\.)+[a-z][a-z0-9-]{{0,61}}[a-z0-9]")
HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){LABEL}(\.{LABEL})*")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
URL = re.compile(r"https?://[^\s]+")
HTTPS_URL = re.compile(r"https://[^\s/?#]+(/[^\s?#]*)?")
SSH_KEY = re.compile(
    r"(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com) +[A-Za-z0-9+/]+={0,3}( +[^\n\r]*)?\s*"
)
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

DEFAULTS: dict[str, Any] = {
    "authenticator": "firstuse",
    "admins": [],
    "users": [],
    "limits": {"memory": "2G", "cpu": 1, "tasks": 512, "disk": "2G"},
    "idle_culling": {"enabled": True, "timeout_minutes": 60},
    "default_ui": "lab",
    "content": {"delivery": "copy"},
    "kernel_display_name": "Python 3",
    "tls": {"mode": "auto", "acme_email": None},
    "domain": None,
    "oauth": None,
    "admin_password_hashes": {},
    "enrolment_codes": True,
    "enrolment_code_hashes": {},
    "class_schedule": None,
}

#: The week's days as class_schedule names them (Monday first, as date.weekday counts).
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: What a class_schedule leaves out (the build's schema documents the same defaults;
#: a unit test checks that they agree). timezone None: the machine's own zone.
SCHEDULE_DEFAULTS: dict[str, Any] = {"timezone": None, "prestart_minutes": 10,
                                     "memory_reserve": "1G"}
#: How long into its session a pre-started server must survive the idle culler, for
#: the students who arrive late (prestart_culling_problem).
LATE_ARRIVAL_MINUTES = 15


class SettingsError(Exception):
    """Settings that cannot be used; the message lists every problem, one per line."""


# ---------------------------------------------------------------- checks
# A check takes a value and returns a problem (text) or None. A spec is a
# check, a dict of specs (a mapping with those keys, all optional),
# Nullable(spec), MappingOf(keys, values), Record(specs, required=...) or
# ListOf(spec).


class Nullable:
    """A spec that also accepts null."""

    def __init__(self, spec: Any):
        self.spec = spec


class MappingOf:
    """A spec for a mapping whose keys are names and whose values all match `values`."""

    def __init__(self, keys: Callable[[Any], str | None], values: Any):
        self.keys, self.values = keys, values


class Record:
    """A spec for a mapping with the keys of `fields` (a dict of specs), of which
    `required` must be given."""

    def __init__(self, fields: dict[str, Any], *, required: tuple[str, ...] = ()):
        self.fields, self.required = fields, required


class ListOf:
    """A spec for a list of at least `min_items` items that each match `items` (any
    spec), each checked under its own index (`sessions[0].start`)."""

    def __init__(self, items: Any, *, min_items: int = 0):
        self.items, self.min_items = items, min_items


def show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"{show(v)} is not one of: {', '.join(choices)}"


def matches(pattern: re.Pattern, what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and pattern.fullmatch(value):
            return None
        return f"{show(value)} is not {what}"

    return check


def number(minimum: float, *, integer: bool = False,
           maximum: float | None = None) -> Callable[[Any], str | None]:
    kinds = (int,) if integer else (int, float)
    what = "a whole number" if integer else "a number"

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"{show(value)} is not {what}"
        if value < minimum:
            return f"{show(value)} is less than {minimum}"
        if maximum is not None and value > maximum:
            return f"{show(value)} is more than {maximum}"
        return None

    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{show(value)} is not true or false"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"{show(value)} is not a text"


def list_of(item: Callable[[Any], str | None], *,
            min_items: int = 0) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"{show(value)} is not a list"
        if len(value) < min_items:
            return f"must list at least {min_items}"
        for index, element in enumerate(value):
            problem = item(element)
            if problem:
                return f"[{index}]: {problem}"
        duplicates = sorted({str(v) for v in value if value.count(v) > 1})
        return f"listed twice: {', '.join(duplicates)}" if duplicates else None

    return check


def pem(label: str, pattern: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and re.search(rf"-----BEGIN {pattern}-----", value):
            return None
        return f"is not PEM text with a '-----BEGIN {label}-----' line"

    return check


names = list_of(matches(HUB_NAME, "a user name (lower case; no spaces or slashes)"))
user_name = matches(HUB_NAME, "a user name (lower case; no spaces or slashes)")
#: bcrypt (`$2b$...`) or hubkiln_auth's `pbkdf2-sha256$ITERATIONS$SALT$HEX`.
SECRET_HASH = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}"
                         r"|pbkdf2-sha256\$[0-9]{4,7}\$[0-9a-f]{8,64}\$[0-9a-f]{64}")
secret_hash = matches(SECRET_HASH, "a bcrypt ($2b$...) or pbkdf2-sha256$... password hash")

#: A 24-hour clock time, like 09:00.
CLOCK_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
#: The shape of an IANA time zone name (zoneinfo then says whether it is known).
ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not a time zone this machine knows, or None (the one rule: the build
    checks launch files with it, the image its launch settings)."""
    if not ZONE_NAME.fullmatch(name):
        return f"{show(name)} is not a time zone name like Europe/Berlin"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else "an IANA name like Europe/Berlin"
        return f"{show(name)} is not a known time zone ({hint})"
    return None


def time_zone(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{show(value)} is not a time zone name like Europe/Berlin"
    return time_zone_problem(value)


def clock_time(value: Any) -> str | None:
    if isinstance(value, str) and CLOCK_TIME.fullmatch(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        # YAML 1.1 reads an unquoted 10:30 as a number in base 60 (630).
        return (f"{value} is not a time like \"09:00\": put the time in quotes (YAML reads "
                f"an unquoted {value // 60}:{value % 60:02d} as the number {value})")
    return f"{show(value)} is not a time like \"09:00\" (24 h, HH:MM)"


OAUTH_SPEC: dict[str, Any] = {
    "client_id": text,
    "client_secret": text,
    "authorize_url": matches(URL, "an http(s) URL"),
    "token_url": matches(URL, "an http(s) URL"),
    "userdata_url": matches(URL, "an http(s) URL"),
    "username_claim": text,
    "scope": list_of(text),
    "issuer": matches(URL, "an http(s) URL"),
    "jwks_endpoint": matches(URL, "an http(s) URL"),
}

CLASS_SCHEDULE_SPEC = Record({
    "timezone": Nullable(time_zone),
    "prestart_minutes": number(1, integer=True, maximum=120),
    "memory_reserve": matches(SIZE, "a size like 1G"),
    "sessions": ListOf(Record({
        "days": list_of(one_of(*DAYS), min_items=1),
        "start": clock_time,
        "minutes": number(1, integer=True, maximum=720),
    }, required=("days", "start", "minutes")), min_items=1),
}, required=("sessions",))

HUB_SPEC: dict[str, Any] = {
    "authenticator": one_of(*AUTHENTICATORS),
    "admins": names,
    "users": names,
    "limits": {
        "memory": matches(SIZE, "a size like 2G"),
        "cpu": number(0.01),
        "tasks": number(16, integer=True),
        "disk": Nullable(matches(SIZE, "a size like 2G")),
    },
    "idle_culling": {"enabled": boolean, "timeout_minutes": number(1, integer=True)},
    "default_ui": one_of("lab", "notebook"),
    "content": {"delivery": one_of("copy", "link")},
    "kernel_display_name": text,
    "tls": {
        "mode": one_of("auto", "self-signed", "provided"),
        "acme_email": Nullable(matches(EMAIL, "an e-mail address")),
    },
    "domain": Nullable(matches(DOMAIN, "a domain name like hub.example.org (lower case)")),
    "oauth": Nullable(OAUTH_SPEC),
    "admin_password_hashes": MappingOf(user_name, secret_hash),
    "enrolment_codes": boolean,
    "enrolment_code_hashes": MappingOf(user_name, secret_hash),
    "class_schedule": Nullable(CLASS_SCHEDULE_SPEC),
}

#: /etc/hubkiln/launch.yaml, as cloud-init writes it (every key optional).
LAUNCH_SPEC: dict[str, Any] = {
    "hostname": Nullable(matches(HOSTNAME, "a host name (lower case letters, digits, dashes)")),
    "domain": HUB_SPEC["domain"],
    "admins": names,
    "users": names,
    "ssh_authorized_keys": list_of(
        matches(SSH_KEY, "one public key line like 'ssh-ed25519 AAAA... me'")),
    "oauth": Nullable(OAUTH_SPEC),
    "tls": Nullable({"certificate": pem("CERTIFICATE", "CERTIFICATE"),
                     "key": pem("PRIVATE KEY", "[A-Z ]*PRIVATE KEY")}),
    "acme_email": Nullable(matches(EMAIL, "an e-mail address")),
    "acme_ca": Nullable(matches(HTTPS_URL, "an https:// directory URL of an ACME CA "
                                "(no query)")),
    "acme_ca_root": Nullable(pem("CERTIFICATE", "CERTIFICATE")),
    "admin_password_hashes": MappingOf(user_name, secret_hash),
    "enrolment_codes": boolean,
    "enrolment_code_hashes": MappingOf(user_name, secret_hash),
    "class_schedule": HUB_SPEC["class_schedule"],
}


def check(data: Any, spec: Any, where: str = "") -> list[str]:
    """Every problem of `data` against `spec`, each as 'key.path: problem'."""
    label = where or "(top level)"
    if isinstance(spec, Nullable):
        return [] if data is None else check(data, spec.spec, where)
    if isinstance(spec, MappingOf):
        if not isinstance(data, dict):
            return [f"{label}: {show(data)} is not a mapping"]
        problems = []
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            problem = spec.keys(key)
            problems += [f"{path}: the key {problem}"] if problem else check(value, spec.values,
                                                                            path)
        return problems
    if isinstance(spec, Record):
        if not isinstance(data, dict):
            return [f"{label}: {show(data)} is not a mapping"]
        missing = [f"{where}.{key}: is missing" if where else f"{key}: is missing"
                   for key in spec.required if key not in data]
        return missing + check(data, spec.fields, where)
    if isinstance(spec, ListOf):
        if not isinstance(data, list):
            return [f"{label}: {show(data)} is not a list"]
        if len(data) < spec.min_items:
            return [f"{label}: must list at least {spec.min_items}"]
        problems = []
        for index, item in enumerate(data):
            problems += check(item, spec.items, f"{where}[{index}]")
        return problems
    if isinstance(spec, dict):
        if not isinstance(data, dict):
            return [f"{label}: {show(data)} is not a mapping"]
        problems = []
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in spec:
                close = difflib.get_close_matches(str(key), list(spec), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(spec)}"
                problems.append(f"{path}: unknown key ({hint})")
            else:
                problems += check(value, spec[key], path)
        return problems
    problem = spec(data)
    return [f"{label}: {problem}"] if problem else []


def check_consistency(settings: dict[str, Any]) -> list[str]:
    """Problems that only show once all the drop-ins are merged."""
    problems = []
    auth = settings["authenticator"]
    if auth in PASSWORD_AUTHENTICATORS:
        for key in ("admins", "users"):
            bad = [n for n in settings[key] if not UNIX_NAME.fullmatch(n)]
            if bad:
                problems.append(f"{key}: {', '.join(map(show, bad))}: with the '{auth}' login, "
                                "names must be Unix user names (a-z, digits, _ and -, at most 32)")
    for key, names_key in (("admin_password_hashes", "admins"),
                           ("enrolment_code_hashes", "users")):
        stray = sorted(set(settings[key]) - set(settings[names_key]))
        if stray:
            problems.append(f"{key}: {', '.join(map(show, stray))} not in {names_key}")
    oauth = settings["oauth"] or {}
    needed = {
        "github": ["client_id", "client_secret"],
        "google": ["client_id", "client_secret"],
        "generic-oauth": ["client_id", "client_secret", "authorize_url", "token_url",
                          "userdata_url"],
        "lti13": ["client_id", "authorize_url", "issuer", "jwks_endpoint"],
    }.get(auth, [])
    missing = [key for key in needed if not oauth.get(key)]
    if missing:
        problems.append(f"oauth: the '{auth}' login needs oauth.{', oauth.'.join(missing)}: give "
                        "them in the launch settings (/etc/hubkiln/launch.yaml), then run "
                        "hubkiln-apply-launch")
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
    """The YAML document in `path`; SettingsError naming the file when it cannot be read."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"{path}: cannot read it: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        detail = " ".join(str(error).split())
        raise SettingsError(f"{path}: not valid YAML: {detail}") from None


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
        found = check(data, HUB_SPEC)
        problems += [f"{path}: {problem}" for problem in found]
        if not found:
            settings = merge(settings, data)
    if not problems and consistent:
        problems += [f"{directory} (merged): {p}" for p in check_consistency(settings)]
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


# ---------------------------------------------------------------- helpers


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


def acme_problems(launch: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) pairs of the launch's ACME CA keys taken together: the one rule,
    used by the build (hubkiln.launch) and the image (hubkiln-apply-launch)."""
    problems = []
    if not launch.get("domain"):
        problems += [(key, "is used only with a `domain` (the name the CA certifies)")
                     for key in ("acme_ca", "acme_ca_root") if launch.get(key)]
    if launch.get("acme_ca_root") and not launch.get("acme_ca"):
        problems.append(("acme_ca_root", "is the root of the CA named in `acme_ca`: give "
                         "`acme_ca` too (Let's Encrypt needs no root)"))
    return problems


def acme_issuer_key(ca: str) -> str:
    """The folder Caddy (certmagic) keeps an ACME CA's certificates in, under
    CADDY_STORAGE/certificates: host and path of the directory URL, `:` and `/` as `-`
    (https://127.0.0.1:9443/acme/local/directory -> 127.0.0.1-9443-acme-local-directory)."""
    rest = ca.split("://", 1)[-1].strip("/").lower()
    return re.sub(r"[:/]", "-", rest)


def acme_certificate(domain: str, ca: str, storage: Path = CADDY_STORAGE) -> Path:
    """Where Caddy stores the certificate that `ca` issued for `domain`."""
    return storage / "certificates" / acme_issuer_key(ca) / domain / f"{domain}.crt"


def render_caddyfile(mode: str, *, domain: str | None = None, email: str | None = None,
                     ca: str | None = None, ca_root: Path | None = None,
                     issued: bool = False, certificate: Path | None = None,
                     key: Path | None = None, storage: Path = CADDY_STORAGE) -> str:
    """The HTTPS front's Caddyfile. `mode` is `files` (the `certificate` and `key`
    files, for any name) or `acme`: the domain's certificate from the ACME CA `ca`
    (Let's Encrypt when None; `ca_root` its root), and the self-signed one for every
    other name. HTTP redirects to HTTPS.

    Caddy 2.6 (checked on 2.6.2) cannot serve a managed certificate and fall back to a
    file certificate for the same name: with one TLS connection policy (the domain
    site has no TLS options of its own) the file certificate's tag selects the
    certificate for every name, the domain too, even once the ACME certificate is
    there; with a connection policy of its own (`protocols` below) the domain gets
    its ACME certificate, and without one the handshake fails (no `fallback_sni` in
    2.6). So `acme` has two shapes, chosen by `issued` (the certificate is in Caddy's
    storage and valid): before, the self-signed certificate for every name while
    Caddy obtains the ACME one in the background; after, the ACME one for the domain.
    hubkiln-front-check.timer switches between them (hubkiln-apply-launch --check-front)."""
    head = ["# Written by hubkiln-apply-launch; do not edit. Change /etc/hubkiln/launch.yaml",
            "# and run `sudo hubkiln-apply-launch` instead.", "{",
            "\t# no admin API: local users must not be able to reconfigure the front",
            "\tadmin off", "\tauto_https disable_redirects",
            # every mode: one place for Caddy's state, the only one its unit may write in /home
            f"\tstorage file_system {storage}"]
    # The hub trusts X-Real-Ip before X-Forwarded-For (tornado's xheaders): set it to
    # the client's own address, so that nobody can choose the address that fail2ban's
    # hub jail bans (Caddy already replaces X-Forwarded-For).
    proxy = [f"\treverse_proxy {PROXY_PUBLIC} {{", "\t\theader_up X-Real-Ip {remote_host}",
             "\t}"]
    headers = ["\theader {", "\t\tX-Content-Type-Options nosniff",
               "\t\tReferrer-Policy same-origin"]
    # HSTS only where the certificate is a real one: a self-signed front must stay
    # reachable once a browser has accepted its certificate.
    hsts = ['\t\tStrict-Transport-Security "max-age=31536000"']
    redirect = ["", "http:// {", "\tredir https://{host}{uri} 308", "}"]
    if mode == "acme":
        if not domain:
            raise ValueError("acme mode needs a domain")
        issuer = ["\t\tissuer acme {", f"\t\t\tdir {ca or LETS_ENCRYPT}",
                  *([f"\t\t\temail {email}"] if email else []),
                  *([f"\t\t\ttrusted_roots {ca_root}"] if ca_root else []), "\t\t}"]
        # `protocols` (Caddy's own defaults) gives the domain a connection policy of its own.
        own_policy = ["\t\tprotocols tls1.2 tls1.3"] if issued else []
        site = [f"https://{domain} {{", "\ttls {", *own_policy, *issuer, "\t}", *proxy,
                *headers, *(hsts if issued else []), "\t}", "}", "", "https:// {",
                f"\ttls {SELF_SIGNED_CERT} {SELF_SIGNED_KEY}", *proxy, *headers, "\t}", "}",
                *redirect]
    elif mode == "files":
        if not (certificate and key):
            raise ValueError("files mode needs a certificate and a key")
        real = certificate != SELF_SIGNED_CERT
        site = ["https:// {", f"\ttls {certificate} {key}", *proxy, *headers,
                *(hsts if real else []), "\t}", "}", *redirect]
    else:
        raise ValueError(f"unknown front mode {mode!r}")
    return "\n".join([*head, "}", "", *site]) + "\n"


def profile_yaml(settings_json: str) -> str:
    """00-profile.yaml from the build's JSON (HUBKILN_HUB_SETTINGS); SettingsError if bad."""
    try:
        data = json.loads(settings_json or "{}")
    except json.JSONDecodeError as error:
        raise SettingsError(f"HUBKILN_HUB_SETTINGS is not JSON: {error}") from None
    problems = check(data, HUB_SPEC)
    if not problems and data.get("oauth"):
        problems.append("oauth: OAuth client settings are given at launch only, never baked")
    if problems:
        raise SettingsError("\n".join(f"HUBKILN_HUB_SETTINGS: {p}" for p in problems))
    return ("# The course profile's hub settings, baked by provision/50-hub-config.sh.\n"
            "# Later drop-ins (50-launch.yaml from the launch settings) override them.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command in ("check", "check-baked"):
            settings = load_settings(Path(argv[1]) if len(argv) > 1 else SETTINGS_DIR,
                                     consistent=command == "check")
            hidden = {**settings, "oauth": "(hidden)" if settings["oauth"] else None}
            print(yaml.safe_dump(hidden, sort_keys=False), end="")
        elif command == "profile-yaml":
            print(profile_yaml(sys.stdin.read()), end="")
        elif command == "caddyfile" and argv[1:] == ["self-signed"]:
            print(render_caddyfile("files", certificate=SELF_SIGNED_CERT, key=SELF_SIGNED_KEY),
                  end="")
        elif command == "caddyfile" and argv[1:2] in (["acme"], ["acme-issued"]) \
                and len(argv) == 3:
            print(render_caddyfile("acme", domain=argv[2], issued=argv[1] == "acme-issued"),
                  end="")
        else:
            print(__doc__.split("Command line")[1], file=sys.stderr)
            return 2
    except SettingsError as error:
        print(f"hubkiln settings error:\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
