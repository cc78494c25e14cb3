"""The provisioning plan: which `provision/` scripts run, in which layer, with which inputs.

The same scripts run in two places: inside a chroot of the root filesystem
(at native speed, for the local qemu image) and inside a booted VM (Packer's
cloud builders). This module is the one list both use, in order, and the one
place that turns a profile into the scripts' declared environment variables.

Layers group scripts by how often their inputs change, so each layer can be
cached on its own: `envs` (OS packages and Python environments, heavy, rarely
changed), `config` (hub settings and content, light), `vm` (needs a running
system), and `seal` (image hygiene, always last, in the VM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config.profile import Profile
from hubkiln.paths import PROVISION_DIR
from hubkiln.proc import run
from hubkiln.progress import Progress
from hubkiln.stages import chroot
from hubkiln.stages.trees import remove_tree

#: Where the build copies `provision/` inside a guest or chroot.
GUEST_PROVISION_DIR = "/run/hubkiln-build/provision"

#: Where the build stages the profile's content folders inside the tree (or the
#: guest) for 60-content.sh; /var/tmp is emptied by the seal.
CONTENT_STAGING = "/var/tmp/hubkiln-content"
#: Where the build puts the profile's hub settings drop-in inside the tree (or the
#: guest) for 50-hub-config.sh, which installs it as HUB_SETTINGS_DROPIN.
HUB_SETTINGS_STAGING = "/var/tmp/hubkiln-settings/00-profile.yaml"
HUB_SETTINGS_DROPIN = "/etc/hubkiln/hub.d/00-profile.yaml"


@dataclass(frozen=True)
class Step:
    """One provisioning script, its layer, and the environment variables it reads."""

    script: str
    layer: str
    doc: str
    inputs: tuple[str, ...] = ()
    #: What the script reads from provision/files/ (files or folders): part of its cache key.
    files: tuple[str, ...] = ()


STEPS: tuple[Step, ...] = (
    Step("10-apt-packages.sh", "envs", "OS packages the hub needs, plus the profile's",
         ("HUBKILN_APT_PACKAGES", "HUBKILN_APT_PROXY")),
    Step("15-kernel-quota.sh", "envs", "the kernels' quota modules; a hook for later kernels",
         files=("quota",)),
    Step("20-hub-env.sh", "envs", "the hub's virtual environment",
         files=("hub-requirements.txt", "uv-requirements.txt")),
    Step("30-proxy.sh", "envs", "configurable-http-proxy", files=("proxy",)),
    Step("40-user-env.sh", "envs", "the students' environment and kernel",
         ("HUBKILN_PYTHON_PACKAGES", "HUBKILN_KERNEL_DISPLAY_NAME"),
         files=("user-requirements.txt", "uv-requirements.txt", "user")),
    Step("50-hub-config.sh", "config", "hub configuration, helpers and units",
         ("HUBKILN_HUB_SETTINGS_FILE",), files=("hub", "bin", "systemd")),
    Step("60-content.sh", "config", "course material, read-only", ("HUBKILN_CONTENT_SRC",)),
    Step("70-https.sh", "config", "the HTTPS front (Caddy)", files=("systemd",)),
    Step("75-data-disk.sh", "config", "/home on an optional data disk; the new-term tool",
         files=("data",)),
    Step("80-hardening.sh", "config", "OS hardening (HARDENING.md)", ("HUBKILN_HARDENING",),
         files=("hardening",)),
    Step("90-seal.sh", "seal", "image hygiene before capture"),
)

LAYERS = ("envs", "config", "vm", "seal")


def steps_in(*layers: str) -> list[Step]:
    """The steps of the given layers, in run order."""
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layer(s): {sorted(unknown)}")
    return [step for step in STEPS if step.layer in layers]


def step_env(steps: list[Step], env: dict[str, str]) -> dict[str, str]:
    """Only the variables that `steps` declare as inputs: what they see, what keys their cache."""
    wanted = {name for step in steps for name in step.inputs}
    return {k: v for k, v in env.items() if k in wanted}


def script_path(step: Step) -> Path:
    """The script's file in this checkout."""
    return PROVISION_DIR / step.script


def hub_settings(profile: Profile) -> dict[str, Any]:
    """The profile's hub settings: the drop-in hub.d/00-profile.yaml of the image
    (`$defs/hub` of the settings contract, which the profile's keys `$ref`)."""
    hub = profile["hub"]
    return {
        "authenticator": hub["authenticator"],
        "admins": list(hub["admins"]),
        "limits": dict(hub["limits"]),
        "idle_culling": dict(hub["idle_culling"]),
        "default_ui": hub["default_ui"],
        "content": {"delivery": profile["content"]["delivery"]},
        "kernel_display_name": profile["environment"]["kernel_display_name"],
        "tls": {"mode": profile["tls"]["mode"], "acme_email": profile["tls"]["acme_email"]},
    }


def render_hub_settings(profile: Profile) -> str:
    """The text of the profile's drop-in, as 50-hub-config.sh installs it."""
    return (f"# The hub settings of the course profile {profile.name!r}, baked by hubkiln\n"
            "# (provision/50-hub-config.sh). Later drop-ins (50-launch.yaml, from the launch\n"
            "# settings) override them.\n"
            + yaml.safe_dump(hub_settings(profile), sort_keys=False, default_flow_style=False))


def hardening_settings(profile: Profile) -> dict[str, Any]:
    """The profile's hardening settings that 80-hardening.sh applies in the image."""
    hardening = profile["hardening"]
    return {
        "enabled": hardening["enabled"],
        "ssh_allowed_networks": list(hardening["ssh_allowed_networks"]),
        "extra_open_ports": list(hardening["extra_open_ports"]),
        "ptrace_scope": hardening["ptrace_scope"],
    }


def provision_env(profile: Profile) -> dict[str, str]:
    """The declared environment variables that carry the profile into the scripts."""
    env = profile["environment"]
    base = profile["base"]
    return {
        "HUBKILN_APT_PACKAGES": " ".join(env["apt_packages"]),
        "HUBKILN_APT_PROXY": base["apt_proxy"] or "",
        "HUBKILN_PYTHON_PACKAGES": "\n".join(env["python_packages"]),
        "HUBKILN_KERNEL_DISPLAY_NAME": env["kernel_display_name"],
        "HUBKILN_HUB_SETTINGS_FILE": HUB_SETTINGS_STAGING,
        "HUBKILN_CONTENT_SRC": CONTENT_STAGING if profile["content"]["folders"] else "",
        "HUBKILN_HARDENING": json.dumps(hardening_settings(profile), sort_keys=True,
                                        separators=(",", ":")),
    }


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def build_ca_bundle(profile: Profile, work: Path) -> Path:
    """The host's CA bundle plus the profile's extra CAs, for the build only."""
    bundle = work / "build-ca.pem"
    parts = [HOST_CA_BUNDLE.read_text()] if HOST_CA_BUNDLE.exists() else []
    parts += [Path(p).read_text() for p in profile["base"]["build_ca_certificates"]]
    bundle.write_text("\n".join(parts))
    return bundle


def provision(tree: Path, steps: list[Step], env: dict[str, str], ca: Path, proxy: str | None,
              log: Path, progress: Progress) -> None:
    """Run `steps` inside a chroot of `tree`, in order."""
    with chroot.chroot_session(tree, ca_bundle=ca, log=log, proxy=proxy) as session:
        for step in steps:
            progress.detail(f"{step.script}: {step.doc}")
            chroot.run_script(session, script_path(step), step_env([step], env), log,
                              support_dir=PROVISION_DIR)


def stage_settings(profile: Profile, tree: Path) -> None:
    """Put the profile's hub settings drop-in into the tree for 50-hub-config.sh."""
    target = tree / HUB_SETTINGS_STAGING.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_hub_settings(profile), encoding="utf-8")


def stage_content(profile: Profile, tree: Path, log: Path) -> None:
    """Copy the profile's content folders into the tree for 60-content.sh to install."""
    staging = tree / CONTENT_STAGING.lstrip("/")
    remove_tree(staging, log)
    staging.mkdir(parents=True)
    for folder in profile["content"]["folders"]:
        run(["cp", "-r", "--no-preserve=ownership", f"{folder['source']}/.",
             str(staging / folder["name"])], log=log)
