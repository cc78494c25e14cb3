"""Benchmark: cold build, then a rebuild after a hub-settings-only change.

    .venv/bin/python benchmarks/build_times.py --profile=optimization

Runs a cold build with an empty cache (a fresh HUBKILN_CACHE under the
project's .cache/, removed afterwards unless --keep-cache), then changes one
hub setting (the idle-culling timeout) in a copy of the profile and builds
again. Prints each stage's time, the compressed image size, and whether the
targets hold (issue targets on a 2-core machine under TCG: cold ≤ 8 min,
hub-settings rebuild ≤ 4 min, image ≤ 600 MB). Writes the results as JSON
next to the profile's outputs (output/<profile>/benchmark.json).

This is a benchmark, not a test: it takes many minutes and its numbers
depend on the machine and on the network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
TARGETS = {"cold_seconds": 8 * 60, "rebuild_seconds": 4 * 60, "image_bytes": 600 * 10**6}


def timed_build(profile_ref: str, validate: bool) -> tuple[float, dict]:
    from hubkiln import actions

    started = time.monotonic()
    manifest = actions.build(profile_ref, accelerator=None, verbose=False,
                             validate_image=validate)
    return time.monotonic() - started, manifest


def hub_settings_variant(profile_ref: str, folder: Path) -> Path:
    """A profile that extends `profile_ref` and changes one hub setting only."""
    from hubkiln.config.profile import find_profile_file, load_profile

    original = find_profile_file(profile_ref).resolve()
    profile = load_profile(profile_ref)
    timeout = profile["hub"]["idle_culling"]["timeout_minutes"] + 1
    variant = folder / f"{profile.name}.yaml"
    variant.write_text(yaml.safe_dump({
        "extends": str(original),
        "name": profile.name,
        "hub": {"idle_culling": {"timeout_minutes": timeout}},
    }))
    return variant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="optimization")
    parser.add_argument("--keep-cache", action="store_true")
    parser.add_argument("--skip-validation", action="store_true",
                        help="time the build stages only, not the validation boot")
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="bench-", dir=PROJECT / ".cache"))
    os.environ["HUBKILN_CACHE"] = str(cache)
    sys.path.insert(0, str(PROJECT))
    validate = not args.skip_validation
    results: dict = {"profile": args.profile, "cpus": os.cpu_count(), "validated": validate}
    try:
        cold, manifest = timed_build(args.profile, validate)
        results["cold_seconds"] = round(cold, 1)
        results["cold_stages"] = manifest["timings_seconds"]
        results["image_bytes"] = manifest["files"][0]["bytes"]
        with tempfile.TemporaryDirectory() as tmp:
            warm, manifest = timed_build(str(hub_settings_variant(args.profile, Path(tmp))),
                                         validate)
        results["rebuild_seconds"] = round(warm, 1)
        results["rebuild_stages"] = manifest["timings_seconds"]
        results["rebuild_cache"] = manifest["cache"]
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)

    results["targets"] = {k: {"limit": v, "value": results[k], "met": results[k] <= v}
                          for k, v in TARGETS.items()}
    from hubkiln.config.profile import load_profile
    from hubkiln.paths import output_dir

    out = output_dir(load_profile(args.profile)) / "benchmark.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0 if all(t["met"] for t in results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
