"""hubkiln tasks. Each task is a docstring, its help, and one call into the package.

Run `invoke --list` for the list and `invoke --help TASK` for the options.
"""

from __future__ import annotations

import functools

from invoke import Exit, task

from hubkiln import actions
from hubkiln.errors import HubkilnError

PROFILE_HELP = "Profile name in profiles/ (like `optimization`) or a path to a YAML file."


def reports_errors(func):
    """Turn a HubkilnError into `Exit` with its message and hint, exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HubkilnError as exc:
            raise Exit(f"error: {exc}", code=1) from None

    return wrapper


@task(help={"profile": PROFILE_HELP})
@reports_errors
def render(c, profile="optimization"):
    """Validate a profile and render its Packer templates into output/<profile>/packer/."""
    _, folder = actions.render(profile)
    print(f"rendered {folder}")


@task(help={"profile": PROFILE_HELP})
@reports_errors
def validate(c, profile="optimization"):
    """Render a profile's templates, then check them with `packer validate`."""
    _, folder = actions.validate(profile)
    print(f"valid: {folder}")


@task(
    help={
        "profile": PROFILE_HELP,
        "accel": "qemu accelerator: `kvm`, `tcg` or `auto` (default: detect; env HUBKILN_ACCEL).",
        "verbose": "Stream every stage's full log to the terminal.",
    },
)
@reports_errors
def build(c, profile="optimization", accel=None, verbose=False):
    """Bake the profile's image: rootfs → disk → bake → outputs, into output/<profile>/."""
    manifest = actions.build(profile, accelerator=accel, verbose=verbose)
    print(f"built {manifest['files'][0]['name']} in output/{manifest['profile']}/")


@task
@reports_errors
def docs(c):
    """Regenerate the README's profile reference from hubkiln/schema.yaml."""
    changed = actions.update_docs()
    print("README.md updated" if changed else "README.md already up to date")


@task(help={"all": "Also remove the caches (bootstrapped and provisioned root filesystems)."})
@reports_errors
def clean(c, all=False):
    """Remove build outputs; with --all also the caches, for a cold build."""
    for path in actions.clean(include_caches=all):
        print(f"removed {path}")


@task(help={"fast": "Run only the unit tests and linters (no VM boots)."})
def tests(c, fast=False):
    """Run the test suite: unit tests and linters first, then the end-to-end image build."""
    c.run("pytest -m 'not vm'", pty=False)
    if not fast:
        c.run("pytest -m vm", pty=False)
