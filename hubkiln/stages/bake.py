"""Bake: Packer boots the assembled disk in qemu for the in-VM steps and the seal.

The build key and the NoCloud seed that let Packer in are made per build, and the
key is removed afterwards; the seal step removes the build account from the image.
Packer's own command lines and its supervision are in packer.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hubkiln.config.profile import Profile
from hubkiln.machine import nocloud
from hubkiln.progress import Progress
from hubkiln.stages import artifacts, packer
from hubkiln.stages.artifacts import BuildPaths
from hubkiln.stages.render import BUILD_USER


def bake(profile: Profile, template_dir: Path, disk_image: Path, paths: BuildPaths,
         accelerator: str, progress: Progress) -> Path:
    """Boot the assembled disk with Packer for the in-VM steps and the seal."""
    key = paths.work / "build-key"
    public = nocloud.make_ssh_key(key, f"hubkiln-build-{profile.name}")
    seed_dir = nocloud.write_seed_dir(
        paths.work / "seed",
        nocloud.render_user_data(nocloud.build_user_data(BUILD_USER, public)),
        nocloud.render_meta_data(f"hubkiln-{profile.name}"),
    )
    packer_out = paths.work / "packer-out"
    if packer_out.exists():
        shutil.rmtree(packer_out)
    variables = {
        "disk_image": str(disk_image),
        "disk_image_checksum": f"sha256:{artifacts.sha256_file(disk_image)}",
        "output_directory": str(packer_out),
        "vm_name": "baked.qcow2",
        "accelerator": accelerator,
        "ssh_private_key_file": str(key),
        "seed_dir": str(seed_dir),
        "serial_log": str(paths.logs / "bake-serial.log"),
    }
    argv = packer.build_command(template_dir, vars=variables, only=["qemu.hubkiln"])
    packer.run_packer_build(
        argv, log=paths.logs / "bake.log", cwd=template_dir,
        on_event=lambda event: progress.detail(packer.describe_event(event))
        if packer.describe_event(event) else None,
    )
    key.unlink(missing_ok=True)
    return packer_out / "baked.qcow2"
