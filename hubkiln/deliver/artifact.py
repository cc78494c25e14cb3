"""The image being published: the current build of a profile (or a given qcow2) and its facts.

`load_artifact` reads the profile's manifest in `output/<profile>/`: the image's
files and formats, its checksums, the VM it asks for; publishing refuses an image
that failed validation. The targets and the format each one takes are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln.config.profile import VmResources, load_profile, vm_resources
from hubkiln.errors import HubkilnError
from hubkiln.paths import output_dir
from hubkiln.proc import run
from hubkiln.stages import artifacts

TARGETS = ("libvirt", "proxmox", "openstack", "aws", "gcp", "azure")


#: Which artifact format each target imports.
TARGET_FORMATS = {"libvirt": "qcow2", "proxmox": "qcow2", "openstack": "qcow2", "aws": "raw",
                  "gcp": "gce", "azure": "vhd"}


class PublishError(HubkilnError):
    """Publishing failed, or the build lacks what the target needs."""


@dataclass(frozen=True)
class Artifact:
    """A finished build as publishing sees it (from output/<profile>/manifest.json)."""

    profile: str
    stem: str
    folder: Path
    files: dict[str, dict[str, Any]]  # format → manifest entry
    os_id: str
    resources: VmResources

    def path(self, fmt: str) -> Path:
        """The artifact of `fmt`, or PublishError naming the profile setting that adds it."""
        if fmt not in self.files:
            raise PublishError(
                f"the build of {self.profile} has no {fmt} image (it has "
                f"{', '.join(self.files)})",
                hint=f"add {fmt} to outputs.formats in the profile and build again")
        return self.folder / self.files[fmt]["name"]


def artifact_from_manifest(manifest: dict[str, Any], folder: Path,
                           resources: VmResources) -> Artifact:
    """Pure: the Artifact that `manifest` (in `folder`) describes."""
    files = {f["format"]: f for f in manifest["files"]}
    first = manifest["files"][0]["name"]
    return Artifact(profile=manifest["profile"], stem=first.split(".", 1)[0], folder=folder,
                    files=files, os_id=manifest["os"]["id"], resources=resources)


def load_artifact(profile_ref: str, image: str | None = None) -> Artifact:
    """The profile's last build, or a single qcow2 `image` standing in for it."""
    profile = load_profile(profile_ref)
    resources = vm_resources(profile["hub"]["limits"])
    if image:
        path = Path(image).resolve()
        if not path.exists():
            raise PublishError(f"no image at {path}", hint="give the path of a built .qcow2")
        return Artifact(profile=profile.name, stem=path.name.split(".", 1)[0],
                        folder=path.parent,
                        files={"qcow2": {"name": path.name, "format": "qcow2",
                                         "virtual_bytes": virtual_bytes(path)}},
                        os_id=profile["base"]["os"], resources=resources)
    folder = output_dir(profile)
    manifest = artifacts.read_manifest(folder)
    if manifest is None:
        raise PublishError(f"no built image for {profile.name} in {folder}",
                           hint=f"run `invoke build --profile={profile_ref}` first")
    return artifact_from_manifest(manifest, folder, resources)


def virtual_bytes(image: Path) -> int:
    import json

    return json.loads(run(["qemu-img", "info", "--output=json", str(image)]))["virtual-size"]
