"""Boot a built image under qemu as the validation does and print where the boot went.

    .venv/bin/python benchmarks/boot_time.py --profile=optimization [--image PATH]

Runs only a few image tests (the units and their CPU priority), so that the figure is
the boot's: seconds from qemu's start to SSH and to the first login page, and the
guest's `systemd-analyze` (time, slowest units, the critical chain of
jupyterhub.service), as every VM validation records them under `validation.boot`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from hubkiln.config.profile import load_profile
from hubkiln.machine import accel
from hubkiln.paths import output_dir
from hubkiln.progress import Progress
from hubkiln.stages import artifacts
from hubkiln.validation import imagetest

TESTS = "test_unit_is_running or test_class_priority"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="optimization")
    parser.add_argument("--image", help="a built .qcow2 (default: the profile's last build)")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    image = Path(args.image) if args.image else output_dir(profile) / artifacts.read_manifest(
        output_dir(profile))["files"][0]["name"]
    with tempfile.TemporaryDirectory(prefix="hubkiln-boot-") as logs:
        record = imagetest.validate_once(profile, image, accel.choose_accelerator(None).name,
                                         Progress(), ["-k", TESTS], 900, Path(logs))
    print(json.dumps({"status": record["status"], "accelerator": record.get("accelerator"),
                      "boot": record.get("boot")}, indent=1))


if __name__ == "__main__":
    main()
