"""NoCloud seeds: the cloud-init files that configure a VM at boot, and keys for them.

The build VM's seed creates a throwaway account (`BUILD_USER`) that accepts a
key made for this build only; the shutdown command of the bake removes the
account, and the seal removes cloud-init's state, so neither remains in the
image. `write_seed_dir` writes `user-data` and `meta-data` (Packer packs them
into an ISO); `make_seed_iso` packs them itself, for boots outside Packer.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import yaml

from hubkiln.proc import run

#: The Unix group that the image's SSH admits (`AllowGroups`, provision/80-hardening.sh);
#: made by provision/50-hub-config.sh. The build account joins it and goes with the seal.
SSH_GROUP = "hubkiln-admins"


def build_user_data(user: str, public_key: str) -> dict[str, Any]:
    """cloud-config for a build or test VM: one sudo account with one key, in the SSH group."""
    return {
        # Without it cloud-init installs `locales` at every first boot (93 s under TCG).
        "locale": "C.UTF-8",
        "users": [
            {
                "name": user,
                "gecos": "hubkiln build (removed before capture)",
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                # SSH admits only this group in a hardened image (80-hardening.sh).
                "groups": [SSH_GROUP],
                "lock_passwd": True,
                "ssh_authorized_keys": [public_key.strip()],
            }
        ],
        "ssh_pwauth": False,
        "package_update": False,
        "package_upgrade": False,
    }


def render_user_data(config: dict[str, Any]) -> str:
    """The `#cloud-config` document for `config`."""
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def render_meta_data(hostname: str, instance_id: str | None = None) -> str:
    """NoCloud meta-data: a fresh instance id makes cloud-init treat the boot as a first boot."""
    instance_id = instance_id or f"hubkiln-{secrets.token_hex(6)}"
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname})


def write_seed_dir(folder: Path, user_data: str, meta_data: str) -> Path:
    """Write `user-data` and `meta-data` into `folder` (created); return it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user-data").write_text(user_data, encoding="utf-8")
    (folder / "meta-data").write_text(meta_data, encoding="utf-8")
    return folder


def make_ssh_key(path: Path, comment: str) -> str:
    """Create a passphrase-less ed25519 key at `path`; return the public key line."""
    for leftover in (path, path.with_suffix(".pub")):
        leftover.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_name(path.name + ".pub").read_text(encoding="utf-8").strip()


def seed_iso_command(folder: Path, iso: Path) -> list[str]:
    """xorriso command that packs a seed folder into a `cidata` ISO."""
    return [
        "xorriso", "-as", "mkisofs", "-quiet", "-output", str(iso), "-volid", "cidata",
        "-joliet", "-rock", str(folder / "user-data"), str(folder / "meta-data"),
    ]


def make_seed_iso(folder: Path, iso: Path, log: Path | None = None) -> Path:
    """Pack `folder`'s user-data and meta-data into a NoCloud ISO at `iso`."""
    iso.unlink(missing_ok=True)
    run(seed_iso_command(folder, iso), log=log,
        hint="install xorriso (apt-get install xorriso)")
    return iso
