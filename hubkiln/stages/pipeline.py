"""The build: render → validate → rootfs → disk → bake → outputs, as a flat list of steps,
then the image's validation and, when asked (`--loadtest N`), a measured class start.

Each step is named after what it does and returns early when its result is
already cached. Heavy layers (the bootstrapped OS, then the Python and Node
environments) are cached under `.cache/rootfs/` by a hash of everything that
shapes them; the light ones (hub settings, content) are applied to a copy at
every build. Intermediate files live in `.cache/work/<profile>/`. The outputs,
logs and templates are written and validated in `output/<profile>.candidate/`,
which replaces `output/<profile>/` only once validated (or with validation
explicitly skipped); a failed one is kept as `output/<profile>.failed/` and
the last published image stays where it was (see artifacts.settle).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln import __version__
from hubkiln.capacity import loadtest
from hubkiln.config.profile import Profile, display_path, load_profile, parse_size
from hubkiln.errors import BuildError
from hubkiln.machine import accel, seed
from hubkiln.paths import CACHE_DIR, PROJECT_DIR, PROVISION_DIR, output_dir
from hubkiln.preflight import check_host_tools
from hubkiln.proc import run
from hubkiln.progress import Progress
from hubkiln.stages import artifacts, chroot, disk, formats, packer, rootfs
from hubkiln.stages.provision import (
    CONTENT_STAGING,
    HUB_SETTINGS_STAGING,
    Step,
    provision_env,
    render_hub_settings,
    script_path,
    step_env,
    steps_in,
)
from hubkiln.stages.render import BUILD_USER, render_templates
from hubkiln.validation import imagetest

ROOT_LABEL = "hubkiln-root"
#: How many trees of each cached layer to keep (other profiles, older inputs).
CACHE_KEEP = 4
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

#: Where the provision scripts install the environments (for the inventory).
VENVS = {"hub": Path("/opt/hubkiln/hub"), "user": Path("/opt/hubkiln/user")}
NODE_MODULES = [Path("/opt/hubkiln/proxy/node_modules")]

BUILD_TOOLS = [
    "packer", "qemu-system-x86_64", "qemu-img", "mmdebstrap", "sgdisk", "mkfs.ext4",
    "mkfs.vfat", "mcopy", "ssh-keygen", "ssh", "xorriso",
]


@dataclass
class BuildPaths:
    """Where one build of one profile reads and writes; `out` is its candidate folder."""

    out: Path
    logs: Path
    work: Path
    cache: Path

    @classmethod
    def for_profile(cls, profile: Profile) -> BuildPaths:
        out = artifacts.Folders.of(output_dir(profile)).candidate
        return cls(out=out, logs=out / "logs", work=CACHE_DIR / "work" / profile.name,
                   cache=CACHE_DIR / "rootfs")


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts and file contents."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()
                           and "__pycache__" not in p.parts) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part if part.is_dir() else part.parent)).encode())
                h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def base_key(profile: Profile) -> str:
    """Cache key of the bootstrapped OS."""
    base = profile["base"]
    return digest("base", base["os"], base["apt_mirror"], rootfs.package_list(base["os"]),
                  Path(rootfs.__file__), Path(disk.__file__))


def layer_key(parent: str, steps: list[Step], env: dict[str, str]) -> str:
    """Cache key of a provisioned layer: its parent, its scripts, their shared files, inputs."""
    files = sorted({name for step in steps for name in step.files})
    return digest(parent, step_env(steps, env), *(script_path(s) for s in steps),
                  PROVISION_DIR / "lib", *(PROVISION_DIR / "files" / name for name in files))


def remove_tree(path: Path, log: Path) -> None:
    """Delete a root filesystem tree, after making sure nothing is mounted below it."""
    if path.exists():
        chroot.unmount_stale(path, log)
        shutil.rmtree(path)


def copy_tree(src: Path, dest: Path, log: Path) -> None:
    """Copy a root filesystem, keeping owners, modes, links and xattrs."""
    remove_tree(dest, log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(src), str(dest)], log=log)


def ensure_cached(key_dir: Path, make, progress: Progress, name: str, what: str,
                  log: Path) -> bool:
    """Make `key_dir` with `make(tmp)` unless it is cached; return True on a cache hit."""
    if key_dir.exists():
        os.utime(key_dir)  # most recently used: kept by prune_cache
        progress.skip(name, f"{what} ({key_dir.name})")
        return True
    key_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in key_dir.parent.glob(f".{key_dir.name}.*"):
        remove_tree(stale, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key_dir.name}.", dir=key_dir.parent))
    try:
        with progress.stage(name, what):
            make(tmp / "root")
        try:
            os.replace(tmp / "root", key_dir)
        except OSError:
            if not key_dir.exists():
                raise
            # A concurrent build made the same layer first: keep theirs, drop ours.
    finally:
        remove_tree(tmp, log)
    return False


def prune_cache(cache: Path, keep: int, log: Path) -> list[Path]:
    """Keep the `keep` most recently used trees of each layer; remove the older ones."""
    removed = []
    for prefix in ("os-", "envs-"):
        trees = sorted(cache.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[keep:]:
            remove_tree(old, log)
            removed.append(old)
    return removed


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


def bake(profile: Profile, template_dir: Path, disk_image: Path, paths: BuildPaths,
         accelerator: str, progress: Progress) -> Path:
    """Boot the assembled disk with Packer for the in-VM steps and the seal."""
    key = paths.work / "build-key"
    public = seed.make_ssh_key(key, f"hubkiln-build-{profile.name}")
    seed_dir = seed.write_seed_dir(
        paths.work / "seed",
        seed.render_user_data(seed.build_user_data(BUILD_USER, public)),
        seed.render_meta_data(f"hubkiln-{profile.name}"),
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


def build(profile_ref: str, *, accelerator: str | None = None, validate: bool = True,
          validation_args: list[str] | None = None, engine: str = "auto",
          loadtest_students: int = 0, loadtest_ramp: float = 60,
          loadtest_active: float = 120) -> dict[str, Any]:
    """Build a profile's image and validate it (unless `validate` is false); return the manifest.

    `validation_args` go to the pytest run of tests/image (e.g. `["-x"]`); `engine` says
    which machines prove the image (imagetest.plan_engines).
    SIGTERM is handled like Ctrl-C, so that Packer, qemu and chroot mounts are cleaned up.
    """
    with chroot.sigterm_raises():
        return _build(profile_ref, accelerator=accelerator, validate=validate,
                      validation_args=validation_args, engine=engine,
                      loadtest_students=loadtest_students, loadtest_ramp=loadtest_ramp,
                      loadtest_active=loadtest_active)


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
        disk.convert_image(raw, assembled, fmt="qcow2", compress=False,
                           log=paths.logs / "disk.log")
        raw.unlink()

    with progress.stage("bake", f"Packer boots the disk ({choice.name}) for the seal"):
        baked = bake(profile, template_dir, assembled, paths, choice.name, progress)
        assembled.unlink()

    with progress.stage("outputs", "formats, checks, checksums, manifest"):
        manifest = publish_outputs(profile, baked, paths, started, progress.timings, inventory,
                                   release, kernel, cache, progress)
    remove_tree(paths.work, paths.logs / "build.log")
    if validate:
        image = paths.out / manifest["files"][0]["name"]
        with progress.stage("validate", "boot the image fresh, run tests/image"):
            record = imagetest.validate_image(profile, image, accelerator=choice.name,
                                              progress=progress, pytest_args=validation_args,
                                              logs=paths.logs, engine=engine)
            imagetest.record_validation(paths.out, record)
        if loadtest_students and record["status"] == "passed":
            # Measured on this very image, before it is published with the sizing line.
            loadtest.run_loadtest(profile_ref, students=loadtest_students, ramp=loadtest_ramp,
                                  active=loadtest_active, image=str(image),
                                  progress=progress, out=paths.out)
        manifest = artifacts.read_manifest(paths.out) or manifest
    previous = artifacts.read_manifest(folders.published)
    if artifacts.settle(folders) == folders.failed:
        record = manifest["validation"]
        raise BuildError(imagetest.failure_message(record),
                         hint=f"see {display_path(folders.failed / record['log'])}; "
                         + kept_note(folders, previous))
    return manifest


def kept_note(folders: artifacts.Folders, previous: dict[str, Any] | None) -> str:
    """Where the image that is still published and the failed one are (pure).

    `previous` is the manifest of the published folder before the failed build."""
    published, failed = display_path(folders.published), display_path(folders.failed)
    kept = f"the failed one is in {failed}/"
    if previous is None:
        return f"no image is published in {published}/; {kept}"
    status = (previous.get("validation") or {}).get("status")
    if status == "passed":
        return f"the last good image is still in {published}/; {kept}"
    return f"the previous image (validation: {status}) is still in {published}/; {kept}"


def publish_outputs(profile: Profile, baked: Path, paths: BuildPaths, started: dt.datetime,
                    timings: dict[str, float], inventory: dict[str, Any],
                    release: dict[str, str], kernel: str,
                    cache: dict[str, str], progress: Progress | None = None) -> dict[str, Any]:
    """Write every format of `outputs.formats` (qcow2 always, first), each checked, then
    SHA256SUMS and manifest.json, last, into `paths.out`: the candidate folder, which
    nothing reads as an image until artifacts.settle publishes it."""
    stem = artifacts.image_stem(profile.name, profile["version"], started.strftime("%Y%m%d"))
    virtual_bytes = parse_size(profile["base"]["disk_size"])
    log = paths.logs / "outputs.log"
    resources = formats.vm_resources(profile["hub"]["limits"])
    files: list[dict[str, Any]] = []
    format_timings: dict[str, float] = {}
    for fmt in formats.ordered_formats(profile["outputs"]["formats"]):
        began = time.monotonic()
        if progress:
            progress.detail(f"{fmt}: for {formats.FORMATS[fmt]}")
        image = formats.write_format(
            fmt, baked, paths.out / formats.artifact_name(stem, fmt),
            virtual_bytes=virtual_bytes, work=paths.work / f"format-{fmt}", log=log,
            name=stem, os_id=profile["base"]["os"], resources=resources,
            detail=progress.detail if progress else lambda _: None)
        files.append({"name": image.name, "format": fmt,
                      "sha256": artifacts.sha256_file(image),
                      "bytes": image.stat().st_size,
                      "virtual_bytes": formats.aligned_size(virtual_bytes)
                      if fmt == "vhd" else virtual_bytes})
        format_timings[f"format:{fmt}"] = round(time.monotonic() - began, 1)
        if progress:
            progress.detail(f"{fmt}: {image.name}, {image.stat().st_size / 1e6:.0f} MB, "
                            f"checked, {format_timings[f'format:{fmt}']} s")
    (paths.out / artifacts.SUMS).write_text(
        artifacts.render_sums({f["name"]: f["sha256"] for f in files}))
    manifest = {
        "profile": profile.name,
        "description": profile["description"],
        "hubkiln_version": __version__,
        "source": artifacts.source_revision(PROJECT_DIR),
        "built_at": started.isoformat(timespec="seconds"),
        "os": {"id": profile["base"]["os"], "pretty_name": release.get("PRETTY_NAME", ""),
               "kernel": kernel},
        "files": files,
        "vm": {"cpus": resources.cpus, "memory_mib": resources.memory_mib},
        "timings_seconds": {**timings, **format_timings},
        "cache": cache,
        "packages": inventory,
        "validation": {"status": "not-run"},
    }
    artifacts.write_manifest(paths.out, manifest)
    return manifest
