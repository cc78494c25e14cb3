"""Launch settings delivered: cloud-init user-data, the NoCloud seed and the credentials it issues.

`invoke seed` checks a launch file (hubkiln/config/launch.py), issues each admin's hub
password and each student's one-time enrolment code (only their hashes go into the
seed), and writes the `#cloud-config` user-data: the hostname, no cloud default user,
and one file, `/etc/hubkiln/launch.yaml` (root, 0600), which the image's first-boot
service reads. The same user-data works as a NoCloud seed ISO (lab hypervisors) and as
a cloud's user data. The user-data carries secrets in clear text: anyone who can read
the cloud's instance metadata or the seed can read them (docs/launch.md, "Secrets").
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config.guest import auth as guest_auth
from hubkiln.config.guest import front as guest_front
from hubkiln.config.launch import Launch
from hubkiln.machine import nocloud
from hubkiln.preflight import check_host_tools

#: Where the image reads the launch document (written by cloud-init, root only).
GUEST_LAUNCH_FILE = "/etc/hubkiln/launch.yaml"


#: User-data size limits of the clouds, in bytes (AWS counts before base64).
#: Azure and OpenStack count the base64 text, hence 3/4 of their limit.
USER_DATA_LIMITS = {"AWS": 16 * 1024, "Azure": 64 * 1024 * 3 // 4,
                    "OpenStack": 65535 * 3 // 4}


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
    return nocloud.render_meta_data(launch["hostname"], instance_id)


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
            packed = nocloud.make_seed_iso(folder, work / "seed.iso", log=log)
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


def make_seed(settings: Launch, *, config: str, iso: Path | None, user_data: Path | None,
              tls_mode: str | None) -> list[str]:
    """Issue the credentials, write the seed ISO and/or the bare user-data and the
    credential files beside them; return what to tell the teacher, line by line."""
    settings, credentials = issue_credentials(settings)
    written = write_seed(settings, iso=iso, user_data=user_data)
    issued = write_credentials(credentials, (iso or user_data))
    lines = [f"checked {config}:"] + [f"  {line}" for line in summarize(settings, tls_mode)]
    for path in written:
        what = "NoCloud seed ISO (label cidata): attach it to the VM as a CD-ROM" \
            if path == iso else "cloud-config user-data: give it as the cloud's user data"
        lines.append(f"wrote {path} (mode 0600), {what}")
    for path in issued:
        what = "the admins' hub passwords" if path.name.endswith(".txt") else \
            "each student's one-time enrolment code, to hand out (needed at the first login)"
        lines.append(f"wrote {path} (mode 0600): {what}")
    for name, password in credentials.admin_passwords.items():
        lines.append(f"admin {name}: hub password {password} (shown once; only its hash is "
                     "in the seed)")
    lines.append("it holds the settings' secrets and SSH keys: keep it private, "
                 "delete it after the launch")
    lines += [f"note: {note}" for note in user_data_notes(render_user_data(settings))]
    return lines
