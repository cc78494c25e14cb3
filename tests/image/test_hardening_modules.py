"""Kernel modules HARDENING.md forbids cannot be loaded, and none is loaded."""

from __future__ import annotations

import json
from typing import Any

import pytest

MODULES = ["cramfs", "freevxfs", "hfs", "hfsplus", "jffs2", "usb-storage"]


@pytest.fixture(scope="module")
def hardening(host: Any) -> dict[str, Any]:
    """The hardening settings baked into the image; skips when hardening is off."""
    with host.sudo():
        found = host.file("/etc/hubkiln/hardening.json")
        settings = json.loads(found.content_string) if found.exists else {}
    if not settings.get("enabled"):
        pytest.skip("hardening.enabled is false in this image (or 80-hardening.sh did not run)")
    return settings


@pytest.mark.parametrize("module", MODULES)
def test_module_cannot_be_loaded(host, hardening, module):
    dry_run = host.run(f"modprobe -n -v {module}")
    assert "install /bin/false" in dry_run.stdout, dry_run.stdout + dry_run.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_is_not_loaded(host, hardening, module):
    loaded = host.run("lsmod").stdout.split()
    assert module.replace("-", "_") not in loaded
