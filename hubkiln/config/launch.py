"""Launch-time settings: the file a teacher writes each term, turned into cloud-init user-data.

A launch file (YAML, `launch_schema.yaml`) names the machine, its admins and
student roster, admin SSH keys, and the secrets that never go into an image
(OAuth client, TLS key). `load_launch` validates it in full and reports every
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
import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config.guest import auth as guest_auth
from hubkiln.config.guest import front as guest_front
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
from hubkiln.errors import BuildError, HubkilnError, ProblemsError
from hubkiln.machine import seed
from hubkiln.paths import DOCS_DIR, EXAMPLES_DIR
from hubkiln.preflight import check_host_tools

LAUNCH_SCHEMA_FILE = Path(__file__).resolve().parent / "launch_schema.yaml"
LAUNCH_DOC = DOCS_DIR / "launch.md"

#: Where the image reads the launch document (written by cloud-init, root only).
GUEST_LAUNCH_FILE = "/etc/hubkiln/launch.yaml"


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
LTI_ONLY_KEYS = ("issuer", "jwks_endpoint")
#: What each login method of a profile needs under `oauth` (the image's table).
OAUTH_NEEDS = guest_settings().OAUTH_NEEDS

#: Bigger files than this are not certificates or keys.
MAX_PEM_BYTES = 64 * 1024

#: User-data size limits of the clouds, in bytes (AWS counts before base64).
#: Azure and OpenStack count the base64 text, hence 3/4 of their limit.
USER_DATA_LIMITS = {"AWS": 16 * 1024, "Azure": 64 * 1024 * 3 // 4,
                    "OpenStack": 65535 * 3 // 4}


@cache
def load_launch_schema() -> dict[str, Any]:
    """The launch file's schema: the image's `$defs/launch` (settings contract), whose
    `tls` may also name PEM files (hubkiln/launch_schema.yaml); those are read and
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

PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
PEM_KEY_HEADERS = ("-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----",
                   "-----BEGIN EC PRIVATE KEY-----")


def normalise_pem(text: str) -> str:
    """PEM text with Unix line ends, no surrounding blank lines, one final newline."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines()) + "\n"


def check_certificate_pem(text: str) -> str | None:
    """Why `text` does not look like a PEM certificate (chain), or None."""
    if "PRIVATE KEY-----" in text:
        return "holds a private key; give it in `key` or `key_file`, apart from the certificate"
    if PEM_CERTIFICATE not in text or "-----END CERTIFICATE-----" not in text:
        return f"is not a PEM certificate (it should start with {PEM_CERTIFICATE})"
    return None


def check_key_pem(text: str) -> str | None:
    """Why `text` does not look like an unencrypted PEM private key, or None."""
    if "ENCRYPTED" in text:
        return ("is protected by a passphrase, which the image cannot enter at boot; "
                "remove it with `openssl pkey -in KEY -out PLAIN-KEY`")
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        return "is an SSH key, not the private key of a TLS certificate"
    if not any(header in text for header in PEM_KEY_HEADERS):
        return "is not a PEM private key (it should start with -----BEGIN PRIVATE KEY-----)"
    return None


def cert_pubkey_command(openssl: str = "openssl") -> list[str]:
    """openssl command: the certificate on stdin → its public key (PEM) on stdout."""
    return [openssl, "x509", "-noout", "-pubkey"]


def key_pubkey_command(openssl: str = "openssl") -> list[str]:
    """openssl command: the private key on stdin → its public key; never prompts."""
    return [openssl, "pkey", "-pubout", "-passin", "pass:"]


def cert_expiry_command(openssl: str = "openssl") -> list[str]:
    """openssl command: print the end date; exit 1 if the certificate on stdin has expired."""
    return [openssl, "x509", "-noout", "-enddate", "-checkend", "0"]


def cert_host_command(name: str, openssl: str = "openssl") -> list[str]:
    """openssl command: say whether the certificate on stdin is valid for host `name`."""
    return [openssl, "x509", "-noout", "-checkhost", name]


def _openssl(cmd: list[str], text: str) -> subprocess.CompletedProcess:
    # The key travels on stdin, never on the command line where `ps` shows it.
    return subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)


def check_tls_with_openssl(certificate: str, key: str, domain: str | None,
                           openssl: str) -> list[tuple[str, str]]:
    """(field, problem) pairs: key matches cert, cert not expired, valid for `domain`."""
    cert_pub = _openssl(cert_pubkey_command(openssl), certificate)
    if cert_pub.returncode != 0:
        return [("certificate", "cannot be read by openssl: "
                 + (cert_pub.stderr.strip().splitlines() or ["unknown error"])[0])]
    problems = []
    key_pub = _openssl(key_pubkey_command(openssl), key)
    if key_pub.returncode != 0:
        problems.append(("key", "cannot be read by openssl (is it complete?)"))
    elif key_pub.stdout.strip() != cert_pub.stdout.strip():
        problems.append(("key", "does not belong to the certificate (their public keys differ)"))
    expiry = _openssl(cert_expiry_command(openssl), certificate)
    if expiry.returncode != 0:
        end = expiry.stdout.strip().splitlines()[0].removeprefix("notAfter=") \
            if expiry.stdout.strip() else "an earlier date"
        problems.append(("certificate", f"has expired (valid until {end})"))
    if domain:
        host = _openssl(cert_host_command(domain, openssl), certificate)
        if "does match" not in host.stdout:
            problems.append(("certificate", f"is not valid for the domain {show(domain)}"))
    return problems


def check_class_schedule(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """The schedule's time zone is one the image knows (the guest's own rule); the
    schema checks the rest."""
    schedule = data.get("class_schedule")
    zone = schedule.get("timezone") if isinstance(schedule, dict) else None
    if not isinstance(zone, str):
        return []
    problem = guest_settings().time_zone_problem(zone)
    return [(("class_schedule", "timezone"), problem)] if problem else []


def check_acme_ca(data: dict[str, Any], openssl: str | None) -> list[tuple[KeyPath, str]]:
    """`acme_ca` and `acme_ca_root` together with `domain` (the guest's own rule), and
    the root as a readable, unexpired PEM certificate."""
    problems: list[tuple[KeyPath, str]] = [
        ((key,), problem) for key, problem in guest_front().acme_problems(data)]
    root = data.get("acme_ca_root")
    if not isinstance(root, str):
        return problems
    if problem := check_certificate_pem(root):
        return [*problems, (("acme_ca_root",), problem)]
    if openssl:
        if _openssl(cert_pubkey_command(openssl), root).returncode != 0:
            problems.append((("acme_ca_root",), "cannot be read by openssl"))
        elif _openssl(cert_expiry_command(openssl), root).returncode != 0:
            problems.append((("acme_ca_root",), "has expired"))
    return problems


def resolve_tls(data: dict[str, Any], base_dir: Path, openssl: str | None
                ) -> tuple[dict[str, str] | None, list[tuple[KeyPath, str]]]:
    """Read `tls` into {certificate, key} PEM text; check it. Return (tls, problems)."""
    tls = data.get("tls")
    if not isinstance(tls, dict):
        return None, []
    problems: list[tuple[KeyPath, str]] = []
    texts: dict[str, str] = {}
    sources: dict[str, str] = {}
    for field, checker in (("certificate", check_certificate_pem), ("key", check_key_pem)):
        inline, file_key = tls.get(field), f"{field}_file"
        from_file = tls.get(file_key)
        if inline is not None and from_file is not None:
            problems.append((("tls", file_key), f"give either `{field}` or `{file_key}`, "
                             "not both"))
            continue
        if inline is None and from_file is None:
            problems.append((("tls", field), f"is missing (give `{field}` as PEM text or "
                             f"`{file_key}` as a file)"))
            continue
        if not isinstance(inline if inline is not None else from_file, str):
            continue  # the schema reports the type
        sources[field] = field if inline is not None else file_key
        if inline is not None:
            text = inline
        else:
            target = (base_dir / from_file).resolve()
            where = f"{show(from_file)}"
            if not target.is_file():
                problems.append((("tls", file_key),
                                 f"{where}: no such file ({display_path(target)})"))
                continue
            if target.stat().st_size > MAX_PEM_BYTES:
                problems.append((("tls", file_key), f"{where} is too big for a PEM file "
                                 f"({target.stat().st_size} bytes)"))
                continue
            try:
                text = target.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append((("tls", file_key), f"{where} cannot be read: {exc}"))
                continue
        if problem := checker(text):
            problems.append((("tls", sources[field]), problem))
            continue
        texts[field] = normalise_pem(text)
    if problems or len(texts) != 2:
        return None, problems
    if openssl:
        domain = data.get("domain") if isinstance(data.get("domain"), str) else None
        for field, problem in check_tls_with_openssl(texts["certificate"], texts["key"],
                                                     domain, openssl):
            problems.append((("tls", sources[field]), problem))
    return (None if problems else texts), problems


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


def validate_launch_data(
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


def default_openssl() -> str | None:
    """The openssl binary when installed: it enables the TLS key and certificate checks."""
    return shutil.which("openssl")


def load_launch(path: str | os.PathLike, *, openssl: str | None | bool = True) -> Launch:
    """Read and validate a launch file; raise LaunchError listing every problem.

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
    doc, found = validate_launch_data(data, base_dir=path.resolve().parent, openssl=tool)
    if found or doc is None:
        raise LaunchError(sorted({f"{where}: {format_keypath(kp)}: {msg}" for kp, msg in found}))
    return Launch(data=doc, source=path)


def demo_launch(hostname: str = "hubkiln-demo") -> Launch:
    """Built-in settings for a local try: admin `teacher`, students `student1`, `student2`."""
    doc, problems = validate_launch_data(
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


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PEM, the embedded launch document) as literal `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """YAML with keys in their given order, long lines kept whole, PEM as literal blocks."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                     width=4096, allow_unicode=True)


def render_launch_document(launch: Launch) -> str:
    """The content of /etc/hubkiln/launch.yaml in the image."""
    return "# hubkiln launch settings, written by cloud-init; applied at boot.\n" \
        + dump_yaml(launch.data)


def user_data_config(launch: Launch) -> dict[str, Any]:
    """The cloud-config mapping: host name, no default user, the launch document (0600)."""
    config: dict[str, Any] = {"hostname": launch["hostname"]}
    if launch["domain"]:
        config["fqdn"] = launch["domain"]
    config.update({
        # Without it cloud-init installs `locales` at first boot (slow, and needs the network).
        "locale": "C.UTF-8",
        "ssh_pwauth": False,
        # No cloud default user (`ubuntu` with password-less sudo): the image's first-boot
        # service creates the admins from the launch document, the same on every cloud.
        "users": [],
        "write_files": [{
            "path": GUEST_LAUNCH_FILE,
            "owner": "root:root",
            "permissions": "0600",
            "content": render_launch_document(launch),
        }],
    })
    return config


def render_user_data(launch: Launch) -> str:
    """The `#cloud-config` user-data for `launch`: for a NoCloud seed or a cloud's user data."""
    return "#cloud-config\n" + dump_yaml(user_data_config(launch))


def render_meta_data(launch: Launch, instance_id: str | None = None) -> str:
    """NoCloud meta-data with a fresh instance id (each seed is a first boot) and the host name."""
    return seed.render_meta_data(launch["hostname"], instance_id)


def user_data_notes(user_data: str) -> list[str]:
    """Warnings about the size of the user-data on clouds with limits."""
    size = len(user_data.encode("utf-8"))
    over = [cloud for cloud, limit in USER_DATA_LIMITS.items() if size > limit]
    if not over:
        return []
    return [f"the user-data is {size} bytes, more than {' and '.join(over)} accept; "
            "compress it there (`gzip -9n user-data`: cloud-init reads gzip-compressed "
            "user-data) or shorten the roster or certificate chain"]


def prestart_summary(data: dict[str, Any]) -> str:
    """Whether, and when, the image pre-starts the roster's servers (class_schedule)."""
    schedule = data.get("class_schedule")
    if not schedule:
        return "off (servers start at login)"
    if not data["users"]:
        return "off (a class_schedule, but no `users` roster)"
    return (f"{schedule['prestart_minutes']} minutes before each of "
            f"{len(schedule['sessions'])} session(s) a week "
            f"({schedule['timezone'] or 'in the machine zone'}), down to "
            f"{schedule['memory_reserve']} of free memory")


def https_summary(data: dict[str, Any], tls_mode: str | None) -> str:
    """What the front will serve, by the image's own plan (hubkiln_front.plan_front) for
    an image with `tls_mode` (the profile's `tls.mode`; None: `auto`, the default)."""
    rules = guest_front()
    front, problems = rules.plan_front(tls_mode or "auto", data)
    if problems:
        return "not planned: " + "; ".join(problems)
    what = rules.front_description(front)
    return what if tls_mode else f"{what} (if the image's tls.mode is auto; --profile checks)"


def summarize(launch: Launch, tls_mode: str | None = None) -> list[str]:
    """One line per setting, for the terminal (secrets are not shown); `tls_mode`: the
    image's `tls.mode`, when the profile is known."""
    data = launch.data
    tls = https_summary(data, tls_mode)
    login = "the login provider given in `oauth`" if data["oauth"] else \
        "the image's login method (roster names)"
    return [
        f"host name: {data['hostname']}" + (f" ({data['domain']})" if data["domain"] else ""),
        f"admins: {', '.join(data['admins']) or 'none'}",
        f"students: {len(data['users'])}",
        f"pre-start before classes: {prestart_summary(data)}",
        f"admin SSH keys: {len(data['ssh_authorized_keys'])}",
        f"admin hub passwords: {len(data['admin_password_hashes'])} of {len(data['admins'])}",
        "enrolment codes: " + (f"{len(data['enrolment_code_hashes'])} of "
                               f"{len(data['users'])} students" if data["enrolment_codes"]
                               else "off (a first login sets the password)"),
        f"login: {login}",
        f"HTTPS: {tls}",
    ]


# --- credentials made at seeding ------------------------------------------------------

#: Enrolment codes: 12 characters without look-alikes (about 59 bits), shown as 4-4-4.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: Codes are random and long, so a cheap hash suffices (a roster of 500 hashes in seconds).
CODE_HASH_ITERATIONS = 10_000


@dataclass(frozen=True)
class Credentials:
    """The secrets issued for one launch: shown to the operator once, never in the image
    (the image receives only their hashes)."""

    admin_passwords: dict[str, str]
    enrolment_codes: dict[str, str]


def new_admin_password() -> str:
    return secrets.token_urlsafe(15)


def new_enrolment_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(12))
    return "-".join(raw[i:i + 4] for i in range(0, 12, 4))


def issue_credentials(launch: Launch) -> tuple[Launch, Credentials]:
    """A password for every admin without a hash and, with `enrolment_codes`, a code for
    every student without one; the launch document then holds their hashes only."""
    hasher, normalise_code = guest_auth().hash_secret, guest_auth().normalise_code
    data = copy.deepcopy(launch.data)
    passwords: dict[str, str] = {}
    for name in data["admins"]:
        if name not in data["admin_password_hashes"]:
            passwords[name] = new_admin_password()
            data["admin_password_hashes"][name] = hasher(passwords[name])
    codes: dict[str, str] = {}
    if data["enrolment_codes"]:
        for name in data["users"]:
            if name not in data["enrolment_code_hashes"]:
                codes[name] = new_enrolment_code()
                data["enrolment_code_hashes"][name] = hasher(
                    normalise_code(codes[name]), iterations=CODE_HASH_ITERATIONS)
    return Launch(data=data, source=launch.source), Credentials(passwords, codes)


def credential_paths(seed_path: Path) -> tuple[Path, Path]:
    """Where the issued admin passwords and enrolment codes go, beside a seed."""
    stem = seed_path.with_suffix("")
    return (stem.with_name(stem.name + ".admin-passwords.txt"),
            stem.with_name(stem.name + ".enrolment-codes.csv"))


def render_admin_passwords(credentials: Credentials) -> str:
    return "".join(f"{name}\t{password}\n"
                   for name, password in credentials.admin_passwords.items())


def render_enrolment_codes(credentials: Credentials) -> str:
    return "name,enrolment_code\n" + "".join(
        f"{name},{code}\n" for name, code in credentials.enrolment_codes.items())


def write_credentials(credentials: Credentials, seed_path: Path) -> list[Path]:
    """Write the issued secrets beside the seed (mode 0600); return the files written."""
    passwords, codes = credential_paths(seed_path)
    written = []
    for path, text, wanted in ((passwords, render_admin_passwords(credentials),
                                credentials.admin_passwords),
                               (codes, render_enrolment_codes(credentials),
                                credentials.enrolment_codes)):
        if wanted:
            tmp = path.with_name(f".{path.name}.new")
            _write_private(tmp, text)
            os.replace(tmp, path)
            written.append(path)
    return written


# --- writing seeds -----------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_seed(launch: Launch, *, iso: Path | None = None, user_data: Path | None = None,
               log: Path | None = None) -> list[Path]:
    """Write a NoCloud ISO (label `cidata`) and/or the bare user-data, each mode 0600.

    Everything is prepared in a private folder beside each target and moved into
    place only when complete, so a failure leaves no partial file behind.
    """
    if iso is None and user_data is None:
        raise ValueError("write_seed needs `iso`, `user_data` or both")
    if iso is not None:
        check_host_tools(["xorriso"])
    text = render_user_data(launch)
    targets = [p for p in (iso, user_data) if p is not None]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        staged: list[tuple[Path, Path]] = []
        if iso is not None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=".hubkiln-seed-", dir=iso.parent)))
            folder = work / "seed"
            folder.mkdir(mode=0o700)
            _write_private(folder / "user-data", text)
            _write_private(folder / "meta-data", render_meta_data(launch))
            packed = seed.make_seed_iso(folder, work / "seed.iso", log=log)
            packed.chmod(0o600)
            staged.append((packed, iso))
        if user_data is not None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=".hubkiln-seed-", dir=user_data.parent)))
            _write_private(work / "user-data", text)
            staged.append((work / "user-data", user_data))
        for source, target in staged:
            os.replace(source, target)
    return targets


# --- the generated parts of docs/launch.md --------------------------------------------------

REFERENCE_BEGIN = ("<!-- launch-reference:begin (generated from hubkiln/launch_schema.yaml "
                   "by hubkiln.config.launch.update_launch_doc) -->")
REFERENCE_END = "<!-- launch-reference:end -->"
EXAMPLE_BEGIN = ("<!-- launch-example:begin (user-data of examples/launch.yaml, generated "
                 "by hubkiln.config.launch.update_launch_doc) -->")
EXAMPLE_END = "<!-- launch-example:end -->"
EXAMPLE_FILE = EXAMPLES_DIR / "launch.yaml"


def render_launch_reference() -> str:
    """The Markdown table of every launch key: allowed values, default, meaning."""
    from hubkiln.config.reference import (
        render_table,  # reference imports profile, as this module does
    )
    return render_table(load_launch_schema())


def render_example_block(example: Path = EXAMPLE_FILE) -> str:
    """The user-data of the example launch file, as a fenced YAML block."""
    return "```yaml\n" + render_user_data(load_launch(example, openssl=None)) + "```\n"


def _splice(doc: str, begin: str, end: str, body: str) -> str:
    start, stop = doc.index(begin) + len(begin), doc.index(end)
    return doc[:start] + "\n" + body + doc[stop:]


def splice_launch_doc(doc: str) -> str:
    """Return `doc` with the reference table and the example user-data regenerated."""
    doc = _splice(doc, REFERENCE_BEGIN, REFERENCE_END, render_launch_reference())
    return _splice(doc, EXAMPLE_BEGIN, EXAMPLE_END, render_example_block())


def update_launch_doc(path: Path = LAUNCH_DOC) -> bool:
    """Rewrite the generated parts of docs/launch.md; return True when it changed."""
    old = path.read_text(encoding="utf-8")
    new = splice_launch_doc(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old


# --- booting a built image locally ---------------------------------------------------------


def local_launch(launch: Launch) -> tuple[Launch, list[str]]:
    """Settings for a VM on this machine: no domain (Let's Encrypt cannot reach it)."""
    if not launch["domain"]:
        return launch, []
    data = {**launch.data, "domain": None, "acme_email": None, "acme_ca": None,
            "acme_ca_root": None}
    note = (f"local launch: ignoring domain {launch['domain']} (Let's Encrypt cannot reach a "
            "VM on this machine); the hub uses a self-signed certificate")
    return Launch(data=data, source=launch.source), [note]


def login_url(https_port: int) -> str:
    return f"https://127.0.0.1:{https_port}/hub/login"


def login_instructions(authenticator: str, launch: Launch, https_port: int,
                       credentials: Credentials | None = None) -> list[str]:
    """How to log in to a local launch, for the terminal."""
    roster = ", ".join(launch["users"][:5]) + (", ..." if len(launch["users"]) > 5 else "")
    admins = ", ".join(launch["admins"]) or "none"
    callback = f"https://127.0.0.1:{https_port}/hub/oauth_callback"
    issued = credentials or Credentials({}, {})
    admin_lines = [f"admin {name}: password {password}"
                   for name, password in issued.admin_passwords.items()]
    code_lines = [f"student {name}: enrolment code {code}"
                  for name, code in list(issued.enrolment_codes.items())[:5]]
    first_login = ("with the enrolment code below, and choose a password"
                   if launch["enrolment_codes"] else "and choose a password")
    lines = {
        "firstuse": [f"students log in with a roster name ({roster or 'none'}) {first_login} "
                     f"at that first login; admins ({admins}) with their password",
                     *admin_lines, *code_lines],
        "native": ["students sign up on the login page and wait for an admin's approval "
                   f"(admins: {admins}, who log in with their password)", *admin_lines],
        "github": [f"log in with GitHub; for a local test register {callback} as the "
                   "OAuth app's callback URL"],
        "google": [f"log in with Google; for a local test register {callback} as an "
                   "authorized redirect URI"],
        "generic-oauth": [f"log in with your provider; for a local test register {callback} "
                          "as a redirect URI"],
        "lti13": ["log in by launching the tool from your LMS (not possible on a local VM)"],
    }
    return lines.get(authenticator, [f"log in with {authenticator}"])


def ssh_instructions(launch: Launch, ssh_port: int, key: Path | None) -> str | None:
    """The command an admin uses to reach the local VM over SSH, or None without keys."""
    if not launch["admins"] or not (launch["ssh_authorized_keys"] or key):
        return None
    identity = f"-i {display_path(key)} " if key else ""
    operator = guest_settings().operator_name(launch["admins"][0])
    return (f"ssh {identity}-p {ssh_port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {operator}@127.0.0.1")


def login_page_answers(url: str, timeout: float = 10) -> bool:
    """True when `url` answers 2xx over HTTPS. The certificate is not checked: local only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # No proxy: the environment's proxy settings must not capture a local address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return False  # not up yet: connection refused, reset, TLS not ready, HTTP error


def check_port_free(port: int, option: str) -> None:
    """Raise when 127.0.0.1:`port` is taken, naming the option that chose it."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise HubkilnError(f"port {port} on 127.0.0.1 is not free ({exc.strerror})",
                               hint=f"choose another with {option}, or leave it out to pick "
                               "a free one") from None


def find_built_image(profile: Profile, profile_ref: str, output_root: Path | None = None) -> Path:
    """The qcow2 image that the last build of `profile` left; raise with a hint if none."""
    from hubkiln.paths import OUTPUT_DIR, output_dir
    from hubkiln.stages.artifacts import read_manifest

    out = output_dir(profile, output_root or OUTPUT_DIR)
    hint = f"run `invoke build --profile={profile_ref}` first"
    manifest = read_manifest(out)
    if manifest is None:
        raise BuildError(f"no built image for the profile {show(profile.name)} "
                         f"({display_path(out / 'manifest.json')} is missing)", hint=hint)
    files = [f for f in manifest.get("files", []) if f.get("format") == "qcow2"]
    if not files:
        raise BuildError(f"the build in {display_path(out)} has no qcow2 image",
                         hint="add qcow2 to the profile's outputs.formats, then " + hint)
    image = out / files[0]["name"]
    if not image.is_file():
        raise BuildError(f"{display_path(image)} (named by the manifest) is missing", hint=hint)
    return image


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so the VM is always stopped."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def boot_locally(
    profile: Profile,
    profile_ref: str,
    launch: Launch | None,
    *,
    https_port: int | None = None,
    ssh_port: int | None = None,
    accelerator: str | None = None,
    timeout: float = 900,
    say: Callable[[str], None] = print,
    output_root: Path | None = None,
    data_disk: Path | None = None,
) -> None:
    """Boot the profile's built image with `launch` (or the demo), wait for the login page,
    print how to use it, and run until Ctrl-C; the VM is always stopped.

    With `data_disk` (a qcow2 file, made blank when missing) /home lives on that
    disk and outlives the VM: boot a newer image with the same file to keep the work."""
    from hubkiln.machine.accel import choose_accelerator
    from hubkiln.machine.vm import Vm, VmSpec, free_port
    from hubkiln.paths import OUTPUT_DIR, output_dir
    from hubkiln.progress import Progress, format_seconds

    image = find_built_image(profile, profile_ref, output_root)
    work = output_dir(profile, output_root or OUTPUT_DIR) / "launch"
    demo_key: Path | None = None
    if launch is None:
        launch = demo_launch()
        work.mkdir(parents=True, exist_ok=True)
        demo_key = work / "demo-key"
        public = demo_key.with_name("demo-key.pub")
        line = public.read_text().strip() if demo_key.exists() and public.exists() else \
            seed.make_ssh_key(demo_key, "hubkiln-demo")
        launch = Launch(data={**launch.data, "ssh_authorized_keys": [line]})
        say("no --config given: using the built-in demo settings (admin `teacher`, students "
            "`student1`, `student2`, SSH key " + display_path(demo_key) + ")")
    auth = profile["hub"]["authenticator"]
    if auth in OAUTH_NEEDS:
        raise HubkilnError(
            f"the profile {show(profile.name)} logs in with {auth}, which cannot work on a VM "
            "on this machine: the provider sends users back to https://DOMAIN/hub/oauth_callback",
            hint="launch it where its domain points (docs/launch.md), or try a profile that "
            "logs in with firstuse or native")
    problems = check_launch_for_profile(launch, profile)
    if problems:
        raise LaunchError(problems)
    launch, notes = local_launch(launch)
    for note in notes:
        say(note)
    launch, credentials = issue_credentials(launch)
    for port, option in ((https_port, "--https-port"), (ssh_port, "--ssh-port")):
        if port:
            check_port_free(port, option)
    https_port, ssh_port = https_port or free_port(), ssh_port or free_port()
    choice = choose_accelerator(accelerator)
    work.mkdir(parents=True, exist_ok=True)
    serial_log = work / "serial.log"
    if data_disk is not None:
        say(ensure_data_disk(data_disk))
    url = login_url(https_port)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="hubkiln-launch-") as tmp, interrupted_by_signals():
        iso = Path(tmp) / "seed.iso"
        write_seed(launch, iso=iso)  # holds the settings' secrets: removed with `tmp`
        serial_log.unlink(missing_ok=True)
        spec = VmSpec(image=image, seed_iso=iso, serial_log=serial_log,
                      accelerator=choice.name, forwards={443: https_port, 22: ssh_port},
                      data_disk=data_disk)
        try:
            with Vm(spec) as vm:
                say(f"booting {display_path(image)} on a snapshot ({choice.name}: "
                    f"{choice.reason}); console log: {display_path(serial_log)}")
                waited = wait_for_login_page(vm, url, timeout, progress)
                say(f"the hub answers after {format_seconds(waited)}: "
                    f"https://127.0.0.1:{https_port}/")
                say("  the certificate is self-signed: your browser warns; accept it for "
                    "this local test")
                for line in login_instructions(profile["hub"]["authenticator"], launch,
                                               https_port, credentials):
                    say(f"  {line}")
                if command := ssh_instructions(launch, ssh_port, demo_key):
                    say(f"  admin shell: {command}")
                for line in stop_instructions(data_disk):
                    say(line)
                while vm.alive():
                    time.sleep(1)
                say("the VM stopped by itself")
        except KeyboardInterrupt:
            say("stopped the VM")


#: Size of a data disk that `invoke launch --data-disk` makes (qcow2: it grows as used).
DATA_DISK_SIZE = "10G"


def ensure_data_disk(disk: Path, size: str = DATA_DISK_SIZE) -> str:
    """Make a blank qcow2 data disk at `disk` unless one is there; say what was done."""
    from hubkiln.machine.vm import create_data_disk_command
    from hubkiln.proc import run

    if not disk.exists():
        disk.parent.mkdir(parents=True, exist_ok=True)
        run(create_data_disk_command(disk, size),
            hint="check that the folder is writable and has room")
        return (f"made a blank {size} data disk {display_path(disk)}: the image formats it "
                "and puts /home on it")
    info = json.loads(run(["qemu-img", "info", "--output=json", "--force-share", str(disk)],
                          hint=f"is {display_path(disk)} a disk image?"))
    if info.get("format") != "qcow2":
        raise HubkilnError(f"{display_path(disk)} is a {info.get('format')} image, not qcow2",
                           hint="convert it: qemu-img convert -O qcow2 FILE NEW.qcow2")
    return f"data disk {display_path(disk)} (kept as it is: /home with the students' work)"


def stop_instructions(data_disk: Path | None) -> list[str]:
    """What stopping the local VM keeps."""
    if data_disk is None:
        return ["press Ctrl-C to stop the VM (it runs on a snapshot: nothing it changes "
                "is kept)"]
    return [f"press Ctrl-C to stop the VM: the OS disk runs on a snapshot (its changes are "
            f"lost), /home stays on {display_path(data_disk)}",
            "  for a clean stop, power it off from inside (sudo poweroff); the next launch "
            "with the same --data-disk keeps the students' work"]


def launch_profile(profile_ref: str, *, config: str | None, https_port: int, ssh_port: int,
                   accelerator: str | None, timeout: float,
                   data_disk: str | None = None) -> None:
    """`invoke launch`: load the profile and the launch file, then boot_locally."""
    from hubkiln.config.profile import load_profile

    profile = load_profile(profile_ref)
    settings = load_launch(config) if config else None
    boot_locally(profile, profile_ref, settings, https_port=https_port or None,
                 ssh_port=ssh_port or None, accelerator=accelerator, timeout=timeout,
                 data_disk=Path(data_disk).resolve() if data_disk else None)


def console_tail(vm: Any) -> str:
    """The end of the guest's console, or a note when it printed nothing."""
    text = vm.serial_tail().strip()
    return text if text and text != "(no serial output)" else "(nothing: the guest printed no " \
        "console output; is the image bootable?)"


def qemu_output(vm: Any) -> str:
    """What qemu itself printed (e.g. a refused disk option), as ` (qemu: ...)`, or ''."""
    process = getattr(vm, "process", None)
    stream = getattr(process, "stdout", None)
    if stream is None:
        return ""
    text = stream.read().decode(errors="replace").strip()
    return f" (qemu: {text[-500:]})" if text else ""


def wait_for_login_page(vm: Any, url: str, timeout: float, progress: Any) -> float:
    """Poll `url` until it answers; return seconds waited. Raise with the console's tail."""
    started = time.monotonic()
    last_line = ""
    with progress.stage("launch", f"boot and wait for {url}"):
        while time.monotonic() - started < timeout:
            if not vm.alive():
                said = qemu_output(vm)
                raise BuildError(f"the VM stopped before the hub answered{said}; the console "
                                 f"ended with:\n{console_tail(vm)}",
                                 hint=f"see the whole console log in {vm.spec.serial_log}")
            if login_page_answers(url, timeout=10):
                return time.monotonic() - started
            line = vm.serial_tail(1).strip()
            if line and line != last_line and line != "(no serial output)":
                progress.detail(line)
                last_line = line
            time.sleep(5)
        raise BuildError(
            f"the login page {url} did not answer within {timeout:.0f}s; the console ended "
            f"with:\n{console_tail(vm)}",
            hint=f"see the whole console log in {vm.spec.serial_log}; a slow machine (TCG) may "
            "need a longer --timeout",
        )
