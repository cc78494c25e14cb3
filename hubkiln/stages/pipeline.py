"""The build: render → rootfs → envs → config → disk → bake → outputs, one stage after the
other, then the image's validation and, when asked (`--loadtest N`), a class start.

Each step is named after what it does and returns early when its result is
already cached. Heavy layers (the bootstrapped OS, then the Python and Node
environments) are cached under `.cache/rootfs/` by a hash of everything that
shapes them; the light ones (hub settings, content) are applied to a copy at
every build. Intermediate files live in `.cache/work/<profile>/`. The outputs,
logs and templates are stored and validated in `output/<profile>.candidate/`,
which replaces `output/<profile>/` only once validated (or with validation
explicitly skipped); a failed one is kept as `output/<profile>.failed/` and
the last good image stays where it was (see artifacts.settle).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from hubkiln import proc
from hubkiln.capacity import loadtest
from hubkiln.config.profile import display_path, load_profile, parse_size
from hubkiln.errors import BuildError
from hubkiln.machine import accel
from hubkiln.paths import output_dir
from hubkiln.preflight import check_host_tools
from hubkiln.progress import Progress
from hubkiln.stages import artifacts, disk, images, rootfs
from hubkiln.stages.artifacts import BuildPaths
from hubkiln.stages.bake import bake
from hubkiln.stages.cache import CACHE_KEEP, base_key, ensure_cached, layer_key, prune_cache
from hubkiln.stages.outputs import NODE_MODULES, VENVS, kept_note, store_outputs
from hubkiln.stages.provision import (
    build_ca_bundle,
    provision,
    provision_env,
    stage_content,
    stage_settings,
    steps_in,
)
from hubkiln.stages.render import render_templates
from hubkiln.stages.trees import copy_tree, remove_tree
from hubkiln.validation import engines, imagetest

ROOT_LABEL = "hubkiln-root"


BUILD_TOOLS = [
    "packer", "qemu-system-x86_64", "qemu-img", "mmdebstrap", "sgdisk", "mkfs.ext4",
    "mkfs.vfat", "mcopy", "ssh-keygen", "ssh", "xorriso",
]


def build(profile_ref: str, *, accelerator: str | None = None, validate: bool = True,
          validation_args: list[str] | None = None, engine: str = "auto",
          loadtest_students: int = 0, loadtest_ramp: float = 60,
          loadtest_active: float = 120) -> dict[str, Any]:
    """Build a profile's image and validate it (unless `validate` is false); return the manifest.

    `validation_args` go to the pytest run of tests/image (e.g. `["-x"]`); `engine` says
    which machines prove the image (imagetest.plan_engines).
    SIGTERM is handled like Ctrl-C, so that Packer, qemu and chroot mounts are cleaned up;
    a build that fails or is interrupted also removes its work folder (scratch: a copy of
    the root filesystem, the raw disk), and its candidate folder keeps the logs.
    """
    paths = BuildPaths.for_profile(load_profile(profile_ref))
    with proc.terminated_by_sigterm():
        try:
            return _build(profile_ref, accelerator=accelerator, validate=validate,
                          validation_args=validation_args, engine=engine,
                          loadtest_students=loadtest_students, loadtest_ramp=loadtest_ramp,
                          loadtest_active=loadtest_active)
        except BaseException:
            log = paths.logs / "build.log" if paths.logs.is_dir() else Path(os.devnull)
            remove_tree(paths.work, log)
            raise


def _build(profile_ref: str, *, accelerator: str | None, validate: bool,
           validation_args: list[str] | None = None, engine: str = "auto",
           loadtest_students: int = 0, loadtest_ramp: float = 60,
           loadtest_active: float = 120) -> dict[str, Any]:
    profile = load_profile(profile_ref)
    check_host_tools(BUILD_TOOLS)
    progress = Progress()
    folders = artifacts.Folders.of(output_dir(profile))
    paths = BuildPaths.for_profile(profile)
    artifacts.start_candidate(folders)
    paths.logs.mkdir()
    remove_tree(paths.work, paths.logs / "build.log")
    paths.work.mkdir(parents=True)
    started = dt.datetime.now(dt.UTC)

    with progress.stage("render", "Packer templates"):
        template_dir = render_templates(profile, paths.out)
    choice = accel.choose_accelerator(accelerator)
    progress.console.print(f"    accelerator: {choice.name} ({choice.reason})")

    base = profile["base"]
    env = provision_env(profile)
    ca = build_ca_bundle(profile, paths.work)
    os_key = base_key(profile)
    os_tree = paths.cache / f"os-{os_key}"
    cache: dict[str, str] = {}
    cache["rootfs"] = "hit" if ensure_cached(
        os_tree,
        lambda dest: rootfs.bootstrap_rootfs(base["os"], dest, mirror=base["apt_mirror"],
                                             security_mirror=base["apt_security_mirror"],
                                             apt_proxy=base["apt_proxy"],
                                             log=paths.logs / "rootfs.log"),
        progress, "rootfs", f"bootstrap {base['os']}", paths.logs / "rootfs.log",
    ) else "miss"
    env_steps = steps_in("envs")
    envs_key = layer_key(os_key, env_steps, env)

    def make_envs(dest: Path) -> None:
        copy_tree(os_tree, dest, paths.logs / "envs.log")
        provision(dest, env_steps, env, ca, base["apt_proxy"], paths.logs / "envs.log", progress)

    envs_tree = paths.cache / f"envs-{envs_key}"
    cache["envs"] = "hit" if ensure_cached(envs_tree, make_envs, progress, "envs",
                                           "OS packages and Python environments (chroot)",
                                           paths.logs / "envs.log") else "miss"
    prune_cache(paths.cache, CACHE_KEEP, paths.logs / "envs.log")

    tree = paths.work / "rootfs"
    with progress.stage("config", "hub settings and content (chroot)"):
        copy_tree(envs_tree, tree, paths.logs / "config.log")
        stage_content(profile, tree, paths.logs / "config.log")
        stage_settings(profile, tree)
        provision(tree, steps_in("config"), env, ca, base["apt_proxy"],
                  paths.logs / "config.log", progress)
        inventory = artifacts.inventory(tree, VENVS, NODE_MODULES)
        release = artifacts.os_release(tree)
        kernel = artifacts.kernel_version(tree)

    raw = paths.work / "disk.raw"
    assembled = paths.work / "disk.qcow2"
    with progress.stage("disk", "GPT disk, BIOS and UEFI boot"):
        disk.assemble_disk(tree, raw, size_bytes=parse_size(base["disk_size"]), label=ROOT_LABEL,
                           log=paths.logs / "disk.log")
        remove_tree(tree, paths.logs / "disk.log")
        images.convert_image(raw, assembled, fmt="qcow2", compress=False,
                           log=paths.logs / "disk.log")
        raw.unlink()

    with progress.stage("bake", f"Packer boots the disk ({choice.name}) for the seal"):
        baked = bake(profile, template_dir, assembled, paths, choice.name, progress)
        assembled.unlink()

    with progress.stage("outputs", "formats, checks, checksums, manifest"):
        manifest = store_outputs(profile, baked, paths, started, progress.timings, inventory,
                                   release, kernel, cache, progress)
    remove_tree(paths.work, paths.logs / "build.log")
    if validate:
        image = paths.out / manifest["files"][0]["name"]
        with progress.stage("validate", "boot the image fresh, run tests/image"):
            record = imagetest.validate_image(profile, image, accelerator=choice.name,
                                              progress=progress, pytest_args=validation_args,
                                              logs=paths.logs, engine=engine)
            engines.record_validation(paths.out, record)
        if loadtest_students and record["status"] == "passed":
            # Measured on this very image, before it becomes current with the sizing line.
            loadtest.run_loadtest(profile_ref, students=loadtest_students, ramp=loadtest_ramp,
                                  active=loadtest_active, image=str(image),
                                  progress=progress, out=paths.out)
        manifest = artifacts.read_manifest(paths.out) or manifest
    previous = artifacts.read_manifest(folders.current)
    if artifacts.settle(folders) == folders.failed:
        record = manifest["validation"]
        raise BuildError(engines.failure_message(record),
                         hint=f"see {display_path(folders.failed / record['log'])}; "
                         + kept_note(folders, previous))
    return manifest


