"""Outputs: every format of the profile, each checked, then SHA256SUMS and manifest.json.

They are stored in the candidate folder (`output/<profile>.candidate/`), which
artifacts.settle makes the current folder (`output/<profile>/`) once the image is
validated, or keeps as `output/<profile>.failed/` when it is not.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from hubkiln import __version__
from hubkiln.config.profile import Profile, display_path, parse_size, vm_resources
from hubkiln.paths import PROJECT_DIR
from hubkiln.progress import Progress
from hubkiln.stages import artifacts, formats
from hubkiln.stages.artifacts import BuildPaths

#: Where the provision scripts install the environments (for the inventory).
VENVS = {"hub": Path("/opt/hubkiln/hub"), "user": Path("/opt/hubkiln/user")}


NODE_MODULES = [Path("/opt/hubkiln/proxy/node_modules")]


def kept_note(folders: artifacts.Folders, previous: dict[str, Any] | None) -> str:
    """Where the image that is still current and the failed one are (pure).

    `previous` is the manifest of the current folder before the failed build."""
    current, failed = display_path(folders.current), display_path(folders.failed)
    kept = f"the failed one is in {failed}/"
    if previous is None:
        return f"no image is in {current}/; {kept}"
    status = (previous.get("validation") or {}).get("status")
    if status == "passed":
        return f"the last good image is still in {current}/; {kept}"
    return f"the previous image (validation: {status}) is still in {current}/; {kept}"


def store_outputs(profile: Profile, baked: Path, paths: BuildPaths, started: dt.datetime,
                    timings: dict[str, float], inventory: dict[str, Any],
                    release: dict[str, str], kernel: str,
                    cache: dict[str, str], progress: Progress | None = None) -> dict[str, Any]:
    """Write every format of `outputs.formats` (qcow2 always, first), each checked, then
    SHA256SUMS and manifest.json, last, into `paths.out`: the candidate folder, which
    nothing reads as an image until artifacts.settle makes it current."""
    stem = artifacts.image_stem(profile.name, profile["version"], started.strftime("%Y%m%d"))
    virtual_bytes = parse_size(profile["base"]["disk_size"])
    log = paths.logs / "outputs.log"
    resources = vm_resources(profile["hub"]["limits"])
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
