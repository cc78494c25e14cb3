"""Kernel modules HARDENING.md forbids cannot be loaded, and none is loaded."""

from __future__ import annotations

import pytest

#: Proven in the VM only (the image's own kernel): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("kernel")

MODULES = ["cramfs", "freevxfs", "hfs", "hfsplus", "jffs2", "usb-storage"]



@pytest.mark.parametrize("module", MODULES)
def test_module_cannot_be_loaded(host, hardening, module):
    dry_run = host.run(f"modprobe -n -v {module}")
    assert "install /bin/false" in dry_run.stdout, dry_run.stdout + dry_run.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_is_not_loaded(host, hardening, module):
    loaded = host.run("lsmod").stdout.split()
    assert module.replace("-", "_") not in loaded
