"""Render the Packer HCL2 templates of `packer/` for one profile.

`render_context` (pure, tested) computes every value the templates show;
the templates only place them, through the `hcl` filter, with StrictUndefined
so that a missing value fails the render instead of producing broken HCL.
`render_templates` writes `output/<profile>/packer/` atomically.

Values that change with every build (paths, the accelerator, the per-build
SSH key, the disk checksum) are Packer variables that the build passes with
`-var`; everything that comes from the profile is rendered in.

Limits: targets Packer 1.6.6 up to, not including, 1.10 (which stopped
bundling the qemu builder); the rendered files do not declare plugins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from hubkiln import __version__
from hubkiln.config.profile import Profile, parse_size
from hubkiln.errors import BuildError
from hubkiln.paths import PROJECT_DIR, TEMPLATE_DIR, output_dir
from hubkiln.preflight import check_host_tools
from hubkiln.stages import packer
from hubkiln.stages.hcl import to_hcl
from hubkiln.stages.provision import (
    CONTENT_STAGING,
    GUEST_PROVISION_DIR,
    HUB_SETTINGS_STAGING,
    provision_env,
    render_hub_settings,
    steps_in,
)

#: The account that Packer's SSH communicator uses in the local qemu VM; the
#: NoCloud seed creates it and the shutdown command removes it.
BUILD_USER = "hubkiln-build"


@dataclass(frozen=True)
class Variable:
    """A Packer input variable that the build sets per run."""

    name: str
    type: str
    default: Any
    description: str


def build_variables(profile: Profile, out: Path) -> list[Variable]:
    """The per-build Packer variables, with defaults that let `packer validate` run."""
    work = out / "work"
    return [
        Variable("disk_image", "string", str(work / "disk.qcow2"),
                 "Assembled disk image (qcow2) that the local qemu build boots."),
        Variable("disk_image_checksum", "string", "none",
                 "Checksum of disk_image as `sha256:<hex>`, checked by Packer."),
        Variable("output_directory", "string", str(work / "packer-out"),
                 "Folder where Packer writes the baked image; must not exist yet."),
        Variable("vm_name", "string", f"{profile.name}.qcow2",
                 "File name of the baked image inside output_directory."),
        Variable("accelerator", "string", "tcg",
                 "qemu accelerator, `kvm` or `tcg`; hubkiln detects which works."),
        Variable("memory", "number", 2048, "Memory of the build VM, in MiB."),
        Variable("cpus", "number", 2, "Virtual CPUs of the build VM."),
        Variable("ssh_private_key_file", "string", str(work / "build-key"),
                 "Throwaway SSH key made for this build only."),
        Variable("seed_dir", "string", str(work / "seed"),
                 "Folder holding the NoCloud seed (user-data, meta-data) of the build VM."),
        Variable("provision_dir", "string", str(PROJECT_DIR / "provision"),
                 "The provision/ folder, uploaded into the guest."),
        Variable("serial_log", "string", str(out / "logs" / "bake-serial.log"),
                 "File that receives the build VM's serial console."),
        Variable("build_ca_file", "string", "",
                 "CA bundle the guest trusts during the build only; empty for none."),
        Variable("cloud_region", "string", "",
                 "Region or zone for cloud builders (for example eu-west-1)."),
        Variable("cloud_project", "string", "",
                 "Google Cloud project, or Azure subscription id, for cloud builders."),
        Variable("cloud_resource_group", "string", "",
                 "Azure resource group that receives the managed image."),
    ]


def prepare_commands() -> list[str]:
    """The first shell lines in the build VM: wait for cloud-init (exit status 2 means
    "done, with recoverable errors", not a reason to stop), then make the folder that
    receives provision/, owned by the build user who uploads it."""
    return ["sudo -n cloud-init status --wait >/dev/null || [ $? -eq 2 ]",
            f"sudo -n mkdir -p {GUEST_PROVISION_DIR}",
            f"sudo -n chown \"$(id -u)\" {GUEST_PROVISION_DIR}"]


def cloud_staging_commands(with_content: bool) -> list[str]:
    """Folders a cloud builder uploads the hub settings (and the course material) into."""
    folders = [HUB_SETTINGS_STAGING.rsplit("/", 1)[0], *([CONTENT_STAGING] if with_content
                                                          else [])]
    return [f"mkdir -p {' '.join(folders)}"]


def disk_size_gib(size_mib: int) -> int:
    """Whole GiB for the cloud builders' volume sizes, rounded up."""
    return -(-size_mib // 1024)


def guest_commands(scripts: list[str]) -> list[str]:
    """Shell lines that run provision scripts from the uploaded folder, in order."""
    return [f"bash {GUEST_PROVISION_DIR}/{script}" for script in scripts]


def execute_command() -> str:
    """How Packer's shell provisioner runs its inline script: as root, with the declared env."""
    return "chmod +x {{ .Path }} && sudo -n env {{ .Vars }} {{ .Path }}"


def shutdown_command() -> str:
    """Remove the build account and its sudo rule, then power off (last act of the bake)."""
    return (
        f"sudo -n sh -c 'userdel --force --remove {BUILD_USER}"
        " && rm -f /etc/sudoers.d/90-cloud-init-users && systemctl poweroff'"
    )


def qemu_args() -> list[list[str]]:
    """Extra qemu arguments: the SSH forward bound to 127.0.0.1 only, an entropy source,
    and qemu's end on a guest kernel panic (pvpanic), so that the build fails at once
    instead of waiting for SSH.

    Packer 1.6.6's own forward binds every interface; replacing its netdev
    keeps the build VM reachable from this host only.
    """
    return [
        ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
        ["-device", "virtio-net,netdev=user.0"],
        ["-device", "virtio-rng-pci"],
        ["-device", "pvpanic-pci"],
        ["-action", "panic=exit-failure"],
    ]


def render_context(profile: Profile, out: Path) -> dict[str, Any]:
    """Every value the templates need, computed from the profile (pure)."""
    vm_scripts = [s.script for s in steps_in("vm", "seal")]
    cloud_scripts = [s.script for s in steps_in("envs", "config", "vm", "seal")]
    return {
        "hubkiln_version": __version__,
        "profile_name": profile.name,
        "image_name": f"hubkiln-{profile.name}",
        "os": profile["base"]["os"],
        "disk_size_mib": parse_size(profile["base"]["disk_size"]) // (1 << 20),
        "disk_size_gib": disk_size_gib(parse_size(profile["base"]["disk_size"]) // (1 << 20)),
        "variables": build_variables(profile, out),
        "build_user": BUILD_USER,
        "guest_provision_dir": GUEST_PROVISION_DIR,
        "shutdown_command": shutdown_command(),
        "prepare_commands": prepare_commands(),
        "qemu_args": qemu_args(),
        "provision_env": [f"{k}={v}" for k, v in sorted(provision_env(profile).items())],
        "execute_command": execute_command(),
        "vm_commands": guest_commands(vm_scripts),
        "cloud_commands": guest_commands(cloud_scripts),
        "cloud_builders": list(profile["outputs"]["cloud_builders"]),
        "content_folders": list(profile["content"]["folders"]),
        "content_staging": CONTENT_STAGING,
        # Cloud builders upload the hub settings drop-in written beside the templates.
        "hub_settings_file": str(out / "packer" / HUB_SETTINGS_FILE),
        "hub_settings_staging": HUB_SETTINGS_STAGING,
        "cloud_staging_commands": cloud_staging_commands(bool(profile["content"]["folders"])),
    }


def hcl_filter(value: Any) -> str:
    """The `hcl` filter: an undefined value fails the render (StrictUndefined) before quoting."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return to_hcl(value)


def make_environment(template_dir: Path = TEMPLATE_DIR) -> jinja2.Environment:
    """A Jinja environment that fails on any undefined value."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters["hcl"] = hcl_filter
    return environment


#: The profile's hub settings drop-in, written beside the rendered templates.
HUB_SETTINGS_FILE = "hub-settings.yaml"


def render_templates(
    profile: Profile, out: Path | None = None, template_dir: Path = TEMPLATE_DIR
) -> Path:
    """Render `packer/*.pkr.hcl.j2` into `<out>/packer/` atomically, with the profile's
    hub settings drop-in beside them (HUB_SETTINGS_FILE); return that folder."""
    out = out or output_dir(profile)
    context = render_context(profile, out)
    environment = make_environment(template_dir)
    names = sorted(p.name for p in template_dir.glob("*.pkr.hcl.j2"))
    rendered = {name[: -len(".j2")]: environment.get_template(name).render(context)
                for name in names}
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "packer"
    staging = Path(tempfile.mkdtemp(prefix=".packer-", dir=out))
    try:
        for name, text in rendered.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / HUB_SETTINGS_FILE).write_text(render_hub_settings(profile), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest


#: Placeholder values that let `packer validate` check cloud sources here;
#: the real ones are given when a cloud build runs.
CLOUD_PLACEHOLDERS = {
    "cloud_region": "placeholder-region-1",
    "cloud_project": "placeholder-project",
    "cloud_resource_group": "placeholder-group",
}


def template_check_vars(scratch: Path, profile: Profile) -> dict[str, str]:
    """Per-build variables that point at throwaway files, for `packer validate` only."""
    key = scratch / "check-key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hubkiln-check", "-f", str(key)],
        check=True,
    )
    seed = scratch / "seed"
    seed.mkdir()
    for name in ("user-data", "meta-data"):
        (seed / name).write_text("#cloud-config\n" if name == "user-data" else "")
    values = {"ssh_private_key_file": str(key), "seed_dir": str(seed)}
    if profile["outputs"]["cloud_builders"]:
        values.update(CLOUD_PLACEHOLDERS)
    return values


def check_templates(profile: Profile, folder: Path) -> None:
    """Check the rendered templates with `packer validate`; raise BuildError if they fail."""
    check_host_tools(["packer", "ssh-keygen"])
    with tempfile.TemporaryDirectory(prefix="hubkiln-check-") as tmp:
        argv = packer.validate_command(folder, vars=template_check_vars(Path(tmp), profile))
        result = subprocess.run(argv, capture_output=True, text=True,
                                env={**os.environ, **packer.PACKER_BASE_ENV})
    if result.returncode != 0:
        raise BuildError(
            f"packer validate failed for {folder}:\n{(result.stdout + result.stderr).strip()}",
            hint="fix the template in packer/ or the value in the profile, then run "
            "`invoke render` again",
        )
