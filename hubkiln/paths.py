"""Where things are: the project's folders, the caches and each profile's outputs.

Every module that needs a location imports it from here, so that moving a folder,
or pointing the outputs or the caches elsewhere (HUBKILN_OUTPUT, HUBKILN_CACHE),
changes one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent

#: Course profiles (YAML), found by name.
PROFILES_DIR = PROJECT_DIR / "profiles"
#: Jinja2 templates of the Packer build.
TEMPLATE_DIR = PROJECT_DIR / "packer"
#: The provisioning scripts and the files they install, the same in a chroot and a VM.
PROVISION_DIR = PROJECT_DIR / "provision"
#: The image's own Python modules and settings schema (the guest side of the contract).
GUEST_FILES = PROVISION_DIR / "files" / "hub"
#: Archive keyrings that the root filesystem is bootstrapped with.
KEYRING_DIR = PACKAGE_DIR / "keyrings"
#: The image tests (pytest-testinfra), one concern per file.
IMAGE_TESTS = PROJECT_DIR / "tests" / "image"
DOCS_DIR = PROJECT_DIR / "docs"
EXAMPLES_DIR = PROJECT_DIR / "examples"

#: Built images, one folder per profile (git-ignored).
OUTPUT_DIR = Path(os.environ.get("HUBKILN_OUTPUT") or PROJECT_DIR / "output")
#: Bootstrapped and provisioned root filesystems, keyed by content (git-ignored).
CACHE_DIR = Path(os.environ.get("HUBKILN_CACHE") or PROJECT_DIR / ".cache")


class Named(Protocol):
    name: str


def output_dir(profile: Named, root: Path | None = None) -> Path:
    """The folder that holds a profile's image, manifest, logs and rendered templates
    (under OUTPUT_DIR unless `root` is given)."""
    return (OUTPUT_DIR if root is None else root) / profile.name
