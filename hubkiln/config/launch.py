"""Launch-time settings: the file a teacher writes each term, turned into cloud-init user-data.

A launch file (YAML, `launch_schema.yaml`) names the machine, its admins and
student roster, admin SSH keys, and the secrets that never go into an image
(OAuth client, TLS key). `load_launch` checks it in full and reports every
problem at once, naming the file and the dotted key path, like profiles do. The
result is a normalised document (every key present, TLS files read in) that
`render_user_data` wraps into a `#cloud-config`: the hostname, no cloud default
user, and one file, `/etc/hubkiln/launch.yaml` (root, 0600), which the image's
first-boot service reads. The same user-data works as a NoCloud seed ISO
(`write_seed`) and as cloud user data. `boot_locally` boots a built image with
such a seed for a local try (`invoke launch`), optionally with a data disk for /home.

Limits: names are checked against a list of well-known system users and
groups, not against the image's own /etc/passwd (the image must still refuse
a name that exists). The TLS key/certificate match, expiry and host-name checks
run only when `openssl` is installed. The user-data carries secrets in clear
text: anyone who can read the cloud's instance metadata or the seed ISO can
read them (see docs/launch.md, "Secrets").
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config.certificates import check_acme_ca, default_openssl, normalise_pem, resolve_tls
from hubkiln.config.guest import schema as guest_schema
from hubkiln.config.guest import settings as guest_settings
from hubkiln.config.profile import (
    KeyPath,
    Profile,
    display_path,
    format_keypath,
    read_yaml_mapping,
    show,
)
from hubkiln.errors import ProblemsError

LAUNCH_SCHEMA_FILE = Path(__file__).resolve().parent / "launch_schema.yaml"


#: OpenSSH public key types: how many length-prefixed fields follow the type name.
SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}
MIN_RSA_BITS = 2048

#: The OAuth keys that together describe a generic OIDC provider.
OIDC_URL_KEYS = ("authorize_url", "token_url", "userdata_url")
#: Keys that only an LTI 1.3 client has.
LTI_ONLY_KEYS = ("issuer", "jwks_endpoint", "courses", "frame_ancestors")
#: What each login method of a profile needs under `oauth` (the image's table).
OAUTH_NEEDS = guest_settings().OAUTH_NEEDS


@cache
def load_launch_schema() -> dict[str, Any]:
    """The launch file's schema: the image's `$defs/launch` (settings contract), whose
    `tls` may also name PEM files (hubkiln/config/launch_schema.yaml); those are read and
    checked in full on the host (resolve_tls), so `tls` requires neither form here."""
    rules = guest_schema()
    document = copy.deepcopy(rules.definition("launch"))
    host = yaml.safe_load(LAUNCH_SCHEMA_FILE.read_text(encoding="utf-8"))
    tls = document["properties"]["tls"]
    tls.pop("required", None)
    tls["description"] = host["tls"]["description"]
    # PEM text is checked in full on the host, after reading files (check_*_pem).
    for field in ("certificate", "key"):
        tls["properties"][field] = {"description": rules.resolve(
            tls["properties"][field], rules.schema())["description"], "type": "string",
            "minLength": 1}
    root = document["properties"]["acme_ca_root"]
    for key in ("pattern", "x-error"):
        root.pop(key)
    root["minLength"] = 1
    tls["properties"].update(host["tls"]["properties"])
    return rules.embedding(document)


def launch_keys() -> list[str]:
    """The top-level keys of a launch document, in the schema's order."""
    return list(load_launch_schema()["properties"])


def launch_defaults() -> dict[str, Any]:
    """Each top-level key's value when the launch file leaves it out."""
    return {k: copy.deepcopy(v.get("default")) for k, v in
            load_launch_schema()["properties"].items()}


class LaunchError(ProblemsError):
    """A launch file failed validation."""

    subject = "the launch settings have"
    reference = "docs/launch.md"


@dataclass(frozen=True)
class Launch:
    """Validated, normalised launch settings: every key present, TLS as PEM text.

    `source` is the launch file, or None for built-in settings (the demo).
    """

    data: dict[str, Any]
    source: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def where(self) -> str:
        return display_path(self.source) if self.source else "(built-in demo settings)"


# --- messages --------------------------------------------------------------------


# --- checks beyond the schema --------------------------------------------------------


def check_username(name: str) -> str | None:
    """Why a schema-valid user name cannot be used, or None (the guest's own rule)."""
    return guest_settings().account_name_problem(name)


def check_names(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Reserved names, names in both lists, and a launch that names nobody."""
    problems: list[tuple[KeyPath, str]] = []
    raw_admins, raw_users = data.get("admins", []), data.get("users", [])
    admins = raw_admins if isinstance(raw_admins, list) else []
    users = raw_users if isinstance(raw_users, list) else []
    for key, names in (("admins", admins), ("users", users)):
        for i, name in enumerate(names):
            if isinstance(name, str) and (problem := check_username(name)):
                problems.append(((key, i), problem))
    for i, name in enumerate(users):
        if isinstance(name, str) and name in admins:
            problems.append((("users", i), f"{show(name)} is also in admins; list each name "
                             "once (admins use the hub too)"))
    if raw_admins == [] and raw_users == []:
        problems.append((("users",), "nobody can log in: list at least one name in `admins` "
                         "or `users`"))
    for key, names, what in (("admin_password_hashes", admins, "admins"),
                             ("enrolment_code_hashes", users, "users")):
        hashes = data.get(key)
        for name in sorted(hashes) if isinstance(hashes, dict) else []:
            if name not in names:
                problems.append(((key, name), f"{show(name)} is not in `{what}`"))
    keys = data.get("ssh_authorized_keys")
    if isinstance(keys, list) and keys and raw_admins == []:
        problems.append((("ssh_authorized_keys",), "no admin can use these keys: "
                         "list the teachers in `admins`"))
    return problems


def _ssh_string(raw: bytes) -> tuple[bytes, bytes]:
    """Split one SSH wire-format string (4-byte length, then bytes) off `raw`."""
    if len(raw) < 4:
        raise ValueError("truncated")
    size = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 + size:
        raise ValueError("truncated")
    return raw[4:4 + size], raw[4 + size:]


def check_ssh_public_key(line: str) -> str | None:
    """Why a pattern-valid public key line is unusable (cut off, mislabelled, weak), or None."""
    kind, blob = line.split()[:2]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "holds a key that is not valid base64 (was the line cut off?)"
    try:
        name, rest = _ssh_string(raw)
        if name.decode("ascii", "replace") != kind:
            return f"says {kind} but holds a {name.decode('ascii', 'replace')[:40]} key"
        fields = []
        for _ in range(SSH_KEY_FIELDS[kind]):
            field, rest = _ssh_string(rest)
            fields.append(field)
    except ValueError:
        return "holds an incomplete key (was the line cut off?)"
    if rest:
        return "holds extra bytes after the key (was it edited?)"
    if kind == "ssh-rsa":
        bits = int.from_bytes(fields[1], "big").bit_length()
        if bits < MIN_RSA_BITS:
            return (f"is a {bits}-bit RSA key; use at least {MIN_RSA_BITS} bits, or better "
                    "ssh-ed25519 (ssh-keygen -t ed25519)")
    if kind in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and len(fields[0]) != 32:
        return "holds an ed25519 key of the wrong length (was it edited?)"
    return None


def check_ssh_keys(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    keys = data.get("ssh_authorized_keys")
    pattern = guest_schema().pattern("ssh_key")
    problems = []
    for i, line in enumerate(keys if isinstance(keys, list) else []):
        if isinstance(line, str) and pattern.search(line) \
                and (problem := check_ssh_public_key(line)):
            problems.append((("ssh_authorized_keys", i), f"{show(line)} {problem}"))
    return problems


def check_oauth(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """The keys each kind of client needs together, and the domain every client needs."""
    oauth = data.get("oauth")
    if not isinstance(oauth, dict):
        return []
    problems: list[tuple[KeyPath, str]] = []
    if data.get("domain") is None:
        problems.append((("domain",), "is needed with `oauth`: the provider sends users back "
                         "to https://DOMAIN/hub/oauth_callback"))
    if any(key in oauth for key in LTI_ONLY_KEYS):
        for key in OAUTH_NEEDS["lti13"]:
            if key not in oauth:
                problems.append((("oauth", key), "is missing (an LTI 1.3 tool needs "
                                 + ", ".join(OAUTH_NEEDS["lti13"]) + ")"))
        return problems
    if "client_secret" not in oauth:
        problems.append((("oauth", "client_secret"), "is missing (an OAuth client needs "
                         "client_id and client_secret)"))
    if any(key in oauth for key in OIDC_URL_KEYS):
        for key in OIDC_URL_KEYS:
            if key not in oauth:
                problems.append((("oauth", key), "is missing (a generic OIDC provider needs "
                                 + ", ".join(OIDC_URL_KEYS) + ")"))
    else:
        for key in ("username_claim", "scope"):
            if key in oauth:
                problems.append((("oauth", key), "is used only with a generic OIDC provider: "
                                 "give " + ", ".join(OIDC_URL_KEYS) + " too, or remove it"))
    return problems


# TLS -----------------------------------------------------------------------------


def check_class_schedule(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """The schedule's time zone is one the image knows (the guest's own rule); the
    schema checks the rest."""
    schedule = data.get("class_schedule")
    zone = schedule.get("timezone") if isinstance(schedule, dict) else None
    if not isinstance(zone, str):
        return []
    problem = guest_settings().time_zone_problem(zone)
    return [(("class_schedule", "timezone"), problem)] if problem else []


# --- the entry points --------------------------------------------------------------------


def normalise(data: dict[str, Any], tls: dict[str, str] | None) -> dict[str, Any]:
    """The document the image receives: every key, in schema order, TLS as PEM text."""
    doc = launch_defaults()
    doc.update(copy.deepcopy(data))
    doc["ssh_authorized_keys"] = [" ".join(k.split()) for k in doc["ssh_authorized_keys"]]
    doc["tls"] = tls
    if doc["acme_ca_root"]:
        doc["acme_ca_root"] = normalise_pem(doc["acme_ca_root"])
    doc["class_schedule"] = guest_settings().with_schedule_defaults(doc["class_schedule"])
    return {key: doc[key] for key in launch_keys()}


def check_launch_data(
    data: dict[str, Any], *, base_dir: Path, openssl: str | None
) -> tuple[dict[str, Any] | None, list[tuple[KeyPath, str]]]:
    """Check a launch mapping in full. Return (normalised document or None, problems)."""
    found = guest_schema().check_against(load_launch_schema(), data,
                                         missing="is missing ({parent} needs {needs})")
    found.extend(check_names(data))
    found.extend(check_ssh_keys(data))
    found.extend(check_oauth(data))
    tls, tls_problems = resolve_tls(data, base_dir, openssl)
    found.extend(tls_problems)
    found.extend(check_acme_ca(data, openssl))
    found.extend(check_class_schedule(data))
    if found:
        return None, found
    return normalise(data, tls), []


def load_launch(path: str | os.PathLike, *, openssl: str | None | bool = True) -> Launch:
    """Read and check a launch file; raise LaunchError listing every problem.

    `openssl`: a path, True (use the installed one, if any) or None/False (skip those checks).
    """
    path = Path(path)
    where = display_path(path)
    if not path.exists():
        raise LaunchError([f"{where}: no such launch file"])
    data, problems = read_yaml_mapping(path)
    if problems:
        # read_yaml_mapping words the empty-file case for profiles.
        raise LaunchError([p if "the file is empty" not in p else
                           f"{where}: the file is empty; a launch file needs at least "
                           "`admins` or `users`" for p in problems])
    assert data is not None
    tool = default_openssl() if openssl is True else (openssl or None)
    doc, found = check_launch_data(data, base_dir=path.resolve().parent, openssl=tool)
    if found or doc is None:
        raise LaunchError(sorted({f"{where}: {format_keypath(kp)}: {msg}" for kp, msg in found}))
    return Launch(data=doc, source=path)


def demo_launch(hostname: str = "hubkiln-demo") -> Launch:
    """Built-in settings for a local try: admin `teacher`, students `student1`, `student2`."""
    doc, problems = check_launch_data(
        {"hostname": hostname, "admins": ["teacher"], "users": ["student1", "student2"]},
        base_dir=Path.cwd(), openssl=None)
    assert doc is not None, problems
    return Launch(data=doc, source=None)


def check_launch_for_profile(launch: Launch, profile: Profile) -> list[str]:
    """Problems of using `launch` with `profile`'s image (login method, TLS mode)."""
    auth = profile["hub"]["authenticator"]
    problems = [f"{launch.where}: {problem}" for key in ("admins", "users")
                for problem in guest_settings().login_name_problems(auth, key, launch[key])]
    oauth = launch["oauth"] or {}
    image = f"the profile {show(profile.name)}"
    missing = [key for key in OAUTH_NEEDS.get(auth, ()) if key not in oauth]
    if missing:
        problems.append(f"{launch.where}: oauth: {image} logs in with {auth}, which needs "
                        + ", ".join(f"oauth.{key}" for key in missing))
    if auth in ("github", "google") and any(key in oauth for key in OIDC_URL_KEYS):
        problems.append(f"{launch.where}: oauth: {image} logs in with {auth}, which knows its "
                        "own URLs; remove " + ", ".join(OIDC_URL_KEYS))
    if profile["tls"]["mode"] == "provided" and launch["tls"] is None:
        problems.append(f"{launch.where}: tls: {image} has tls.mode `provided`, which needs "
                        "`tls` (certificate and key)")
    culled = guest_settings().prestart_culling_problem(launch.data.get("class_schedule"),
                                                       profile["hub"]["idle_culling"])
    if culled:
        problems.append(f"{launch.where}: class_schedule.prestart_minutes: {culled} "
                        f"({image})")
    return problems


# --- rendering ---------------------------------------------------------------------------




# --- credentials made at seeding ------------------------------------------------------


# --- writing seeds -----------------------------------------------------------------------


# --- the generated parts of docs/launch.md --------------------------------------------------


# --- booting a built image locally ---------------------------------------------------------


