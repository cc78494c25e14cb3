"""Boot a built image with test launch settings, then run the image tests against it.

    .venv/bin/python tests/image/boot_vm.py [--profile ci | --image PATH] [--keep] [-- PYTEST ARGS]

The guest gets a NoCloud seed with a throwaway key for a test admin `tester`
(created by cloud-init, sudo, in hubkiln-admins) and /etc/hubkiln/launch.yaml
(written by cloud-init's write_files, as at a real launch) naming the admin
`teacher` (same key) and the students `alice` and `bob`. Ports 22, 443 and 80
are forwarded to free ports on 127.0.0.1 only. The runner waits for SSH and
for the hub's login page over HTTPS, runs `pytest tests/image` with the
matching options, and always stops the VM. `--keep` leaves it running until
Enter is pressed, printing how to reach it.

Limits: qemu user networking; TCG unless HUBKILN_ACCEL=kvm; the key and seed
live in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from hubkiln.seed import (  # noqa: E402
    build_user_data,
    make_seed_iso,
    make_ssh_key,
    render_meta_data,
    render_user_data,
    write_seed_dir,
)
from hubkiln.vm import Vm, VmSpec, free_port  # noqa: E402

TEST_ADMIN = "tester"


def launch_settings(public_key: str) -> dict[str, Any]:
    """The launch settings the tests boot with (the contract of /etc/hubkiln/launch.yaml)."""
    return {
        "hostname": "hubkiln-test",
        "domain": None,
        "admins": ["teacher"],
        "users": ["alice", "bob"],
        "ssh_authorized_keys": [public_key.strip()],
        "oauth": None,
        "tls": None,
        "acme_email": None,
    }


def seed_user_data(public_key: str, launch: dict[str, Any]) -> dict[str, Any]:
    """cloud-config: the test admin account plus launch.yaml written as at a real launch."""
    config = build_user_data(TEST_ADMIN, public_key)
    config["users"][0]["groups"] = "hubkiln-admins"
    config["hostname"] = launch["hostname"]
    config["write_files"] = [{
        "path": "/etc/hubkiln/launch.yaml",
        "owner": "root:root",
        "permissions": "0600",
        "content": yaml.safe_dump(launch, sort_keys=False),
    }]
    return config


#: Guests are throwaway: no host-key bookkeeping. (testinfra 10 ignores --ssh-extra-args
#: for ssh:// hosts, so the options go through --ssh-config.)
SSH_CONFIG = ("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
              "  LogLevel ERROR\n")


def pytest_command(ssh_port: int, key: Path, ssh_config: Path, extra: list[str]) -> list[str]:
    """The pytest command line that runs tests/image against the guest."""
    return [
        sys.executable, "-m", "pytest", str(PROJECT / "tests" / "image"), "-p", "no:cacheprovider",
        f"--hosts=ssh://{TEST_ADMIN}@127.0.0.1:{ssh_port}", f"--ssh-identity-file={key}",
        f"--ssh-config={ssh_config}", *extra,
    ]


def wait_for_login_page(port: int, timeout: float) -> float:
    """Seconds until https://127.0.0.1:PORT/hub/login answers 200 (self-signed accepted)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/hub/login", context=context,
                                        timeout=20) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError as error:
            last = str(error)
        time.sleep(3)
    raise TimeoutError(f"no login page after {timeout:.0f}s (last error: {last})")


def latest_image(profile: str) -> Path:
    images = sorted((PROJECT / "output" / profile).glob("*.qcow2"), key=lambda p: p.stat().st_mtime)
    if not images:
        raise SystemExit(f"no image in output/{profile}/: run `invoke build --profile={profile}`")
    return images[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the VM until Enter is pressed")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the hub")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args()
    image = args.image or latest_image(args.profile)
    accel = os.environ.get("HUBKILN_ACCEL", "tcg")
    with tempfile.TemporaryDirectory(prefix="hubkiln-image-tests-") as tmp:
        folder = Path(tmp)
        key = folder / "key"
        public = make_ssh_key(key, "hubkiln-image-tests")
        seed = write_seed_dir(folder / "seed",
                              render_user_data(seed_user_data(public, launch_settings(public))),
                              render_meta_data("hubkiln-test"))
        iso = make_seed_iso(seed, folder / "seed.iso")
        ports = {22: free_port(), 443: free_port(), 80: free_port()}
        spec = VmSpec(image=image, seed_iso=iso, serial_log=folder / "serial.log",
                      accelerator=accel, memory_mib=3072, forwards=ports)
        print(f"booting {image.name} ({accel}); ssh {ports[22]}, https {ports[443]}, "
              f"http {ports[80]}", flush=True)
        started = time.monotonic()
        with Vm(spec) as vm:
            try:
                ssh_after = vm.wait_for_ssh(TEST_ADMIN, key, timeout=args.timeout)
                print(f"SSH after {ssh_after:.0f}s", flush=True)
                wait_for_login_page(ports[443], args.timeout - (time.monotonic() - started))
                print(f"login page after {time.monotonic() - started:.0f}s from boot", flush=True)
            except Exception:
                print(vm.serial_tail(60), file=sys.stderr)
                raise
            env = {**os.environ, "HUBKILN_TEST_HTTPS_PORT": str(ports[443]),
                   "HUBKILN_TEST_HTTP_PORT": str(ports[80])}
            ssh_config = folder / "ssh_config"
            ssh_config.write_text(SSH_CONFIG)
            command = pytest_command(ports[22], key, ssh_config, args.pytest_args)
            if args.keep:
                print("VM kept running. In another shell:\n  "
                      f"HUBKILN_TEST_HTTPS_PORT={ports[443]} HUBKILN_TEST_HTTP_PORT={ports[80]} "
                      + " ".join(command)
                      + f"\n  ssh -i {key} -p {ports[22]} -o StrictHostKeyChecking=no "
                      f"{TEST_ADMIN}@127.0.0.1\nPress Enter to stop it.", flush=True)
                input()
                return 0
            return subprocess.run(command, env=env, cwd=PROJECT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
