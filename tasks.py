"""hubkiln tasks. Each task is a docstring, its help, and one call into the package.

Run `invoke --list` for the list and `invoke --help TASK` for the options.
"""

from __future__ import annotations

import functools
import os
import sys

from invoke import Exit, task

from hubkiln import actions, proc
from hubkiln.errors import HubkilnError

PROFILE_HELP = "Profile name in profiles/ (like `optimization`) or a path to a YAML file."


def reports_errors(func):
    """Turn a HubkilnError into `Exit` with its message and hint, exit status 1, and an
    interruption (Ctrl-C, SIGTERM) into a one-line note, exit status 130: by then every
    child process is stopped and every temporary folder and mount removed."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with proc.terminated_by_sigterm():
                return func(*args, **kwargs)
        except HubkilnError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: stopped every process it had started; nothing new "
                       "is in output/ (the last image, if any, is where it was)",
                       code=130) from None

    return wrapper


@task(help={"profile": PROFILE_HELP})
@reports_errors
def render(c, profile="optimization"):
    """Check a profile, render its Packer templates into output/<profile>/packer/ and check
    them with `packer validate`."""
    _, folder = actions.render(profile)
    print(f"rendered and checked {folder}")


@task(
    help={
        "profile": PROFILE_HELP,
        "accel": "qemu accelerator: `kvm`, `tcg` or `auto` (default: detect; env HUBKILN_ACCEL).",
        "verbose": "Stream every stage's full log to the terminal.",
        "skip_validation": "Do not boot and test the image (it is then marked not validated).",
        "faults": "Validation also runs the fault tests and the reboot (about 8 min under "
        "TCG, mostly while the Lynis audit runs anyway).",
        "engine": "Which machines prove the image: `auto` (default), `vm` or `container` "
        "(see `invoke validate --help`).",
        "loadtest": "After validation, measure a class start of N students (`invoke loadtest "
        "--help`: logins over 60 s, 120 s active) and put the sizing line in the manifest.",
    },
)
@reports_errors
def build(c, profile="optimization", accel=None, verbose=False, skip_validation=False,
          faults=False, engine="auto", loadtest=0):
    """Bake and validate the profile's image: rootfs → disk → bake → outputs → validation."""
    if faults:
        os.environ["HUBKILN_TEST_FAULTS"] = "1"  # read by tests/image/conftest.py
    manifest = actions.build(profile, accelerator=accel, verbose=verbose,
                             validate_image=not skip_validation, engine=engine,
                             loadtest_students=int(loadtest))
    print(f"built {manifest['files'][0]['name']} in output/{manifest['profile']}/")
    if manifest.get("capacity"):
        print(manifest["capacity"]["sizing"])


@task(help={
    "profile": PROFILE_HELP,
    "image": "Image file to test instead of the profile's last build (not recorded).",
    "accel": "qemu accelerator: `kvm`, `tcg` or `auto` (default: detect).",
    "faults": "Also run the fault tests (memory hog, fork bomb, full disk, hostile logins, "
    "killed hub and proxy) and the reboot, last.",
    "select": "Run only the image tests matching this pytest -k expression (like "
    "`faults or restarts`); such a partial run is not recorded in manifest.json.",
    "engine": "`auto` (default: the VM under KVM; under emulation the container for the "
    "user-space tests and the VM for what needs the image's kernel, boot and firewall), "
    "`vm` (every test in the VM) or `container` (systemd-nspawn only, at native speed; "
    "the tests that need the VM are not run, and the run is not recorded).",
    "variant": "A profile (name or path) that differs from --profile only in its hub "
    "settings (hub, tls, content.delivery): the container boots the image with that "
    "profile's settings and the tests expect them (not recorded; logs in "
    "logs/variant-NAME/).",
})
@reports_errors
def validate(c, profile="optimization", image=None, accel=None, faults=False, select=None,
             engine="auto", variant=None):
    """Boot a built image fresh on a snapshot and validate it with tests/image (testinfra)."""
    if faults:
        os.environ["HUBKILN_TEST_FAULTS"] = "1"  # read by tests/image/conftest.py
    record = actions.validate(profile, image=image, accelerator=accel, select=select,
                              engine=engine, variant_ref=variant)
    partial = f" (only tests matching {select!r}; not recorded)" if select else ""
    if record.get("not_run"):
        partial += f"; not run: {record['not_run']} (not recorded)"
    engines = ", ".join(f"{name}: {run['passed']} passed" for name, run in
                        record.get("engines", {}).items())
    print(f"validation passed: {record['passed']} passed, {record['skipped']} skipped "
          f"in {record['seconds']}s ({engines}){partial}")


@task(help={
    "profile": PROFILE_HELP,
    "students": "How many roster students log in (student001, ...; 1 to 500).",
    "ramp": "Seconds over which their logins arrive, evenly spread (default 60).",
    "active": "Seconds each student stays active after the first cell, running a cell "
    "every 20 s (default 120).",
    "engine": "`auto` (default: the VM under KVM, else the container), `container` "
    "(systemd-nspawn at native speed) or `vm` (qemu; a class-scale run needs KVM).",
    "image": "Image file to boot instead of the profile's last build (its sizing line then "
    "stays out of the manifest).",
    "prestart": "Launch with a class_schedule whose session starts 5 minutes later: the hub "
    "pre-starts the roster's servers, and the class logs in once they are ready.",
})
@reports_errors
def loadtest(c, profile="optimization", students=0, ramp=60, active=120,
             engine="auto", image=None, prestart=False):
    """Class start, measured: N students log in, spawn and run cells; writes capacity.json."""
    record = actions.measure_class_start(profile, students=students, ramp=ramp,
                                         active=active, engine=engine, image=image,
                                         prestart=prestart)
    print(record["sizing"])


@task
@reports_errors
def docs(c):
    """Regenerate the profile reference in README.md and the launch file's in docs/launch.md."""
    changed = actions.update_docs()
    print("README.md and docs/launch.md: " + ("updated" if changed else "already up to date"))


@task(help={"all": "Also remove the caches (bootstrapped and provisioned root filesystems)."})
@reports_errors
def clean(c, all=False):
    """Remove build outputs; with --all also the caches, for a cold build."""
    for path in actions.clean(include_caches=all):
        print(f"removed {path}")


@task(help={"fast": "Run only the unit tests and linters (no VM boots).",
            "slow": "Also run the tests marked slow (the new-term test)."})
def test(c, fast=False, slow=False):
    """Run hubkiln's test suite: unit tests and linters first, then the end-to-end build."""
    pytest = f"{sys.executable} -m pytest"
    c.run(f"{pytest} -m 'not vm'", pty=False)
    if not fast:
        c.run(f"{pytest} -m 'vm{'' if slow else ' and not slow'}'", pty=False)


LAUNCH_HELP = "Launch settings (YAML, see docs/launch.md), like examples/launch.yaml."


@task(
    help={
        "config": LAUNCH_HELP,
        "output": "NoCloud seed ISO to write (default: seed.iso, unless only --user-data "
        "is given).",
        "user_data": "Write the bare cloud-config user-data to this file, for a cloud's "
        "user data (alone, or beside --output).",
        "profile": "Also check the settings against this profile's login method and TLS mode.",
    },
)
@reports_errors
def seed(c, config=None, output=None, user_data=None, profile=None):
    """Check launch settings and write a NoCloud seed ISO (lab hypervisors) or cloud user-data."""
    for line in actions.seed(config, iso=output, user_data=user_data, profile_ref=profile):
        print(line)


@task(
    help={
        "profile": PROFILE_HELP,
        "config": LAUNCH_HELP + " Default: built-in demo settings (admin `teacher`, "
        "students `student1`, `student2`).",
        "https_port": "Port on 127.0.0.1 for the hub's HTTPS (default: a free one).",
        "ssh_port": "Port on 127.0.0.1 for SSH to the VM (default: a free one).",
        "accel": "qemu accelerator: `kvm`, `tcg` or `auto` (default: detect; env HUBKILN_ACCEL).",
        "timeout": "Seconds to wait for the login page to answer.",
        "data_disk": "qcow2 file for /home (made blank, 10 GiB, when missing); it outlives "
        "the VM: launch the next image with the same file to keep the students' work "
        "(docs/new-term.md).",
    },
)
@reports_errors
def launch(c, profile="optimization", config=None, https_port=0, ssh_port=0, accel=None,
           timeout=900, data_disk=None):
    """Boot the profile's built image locally with launch settings; Ctrl-C stops it."""
    actions.launch(profile, config=config, https_port=https_port, ssh_port=ssh_port,
                   accelerator=accel, timeout=timeout, data_disk=data_disk)


@task(
    help={
        "profile": PROFILE_HELP,
        "to": "Where: `libvirt` (imports and defines a domain here), or `proxmox`, `openstack`, "
        "`aws`, `gcp`, `azure` (prints the commands, runs none).",
        "pool": "libvirt storage pool (default: `default`, created if missing).",
        "name": "libvirt domain name (default: the image's name).",
        "firmware": "libvirt firmware: `bios` (default) or `uefi`.",
        "network": "libvirt network (default: `default` if active, else user-mode networking).",
        "image": "A .qcow2 to publish instead of the profile's last build (libvirt only).",
        "accel": "qemu accelerator for the domain type: `kvm`, `tcg` or `auto` (default).",
    },
)
@reports_errors
def publish(c, profile="optimization", to=None, pool="default", name=None, firmware="bios",
            network=None, image=None, accel=None):
    """Publish the built image: into a local libvirt, or print a cloud's exact commands."""
    for line in actions.publish_image(profile, to=to or "", pool=pool, name=name,
                                      firmware=firmware, network=network, image=image,
                                      accelerator=accel):
        print(line)
