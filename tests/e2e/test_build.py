"""The ci profile builds from scratch into a checksummed, listed image (its boots under
SeaBIOS and UEFI: test_instances.py)."""

from __future__ import annotations

import subprocess

import pytest

from hubkiln.config.profile import parse_size
from hubkiln.paths import output_dir
from hubkiln.stages import artifacts

pytestmark = [pytest.mark.vm, pytest.mark.e2e]


def test_outputs_are_checksummed_and_listed(built, image, e2e_profile):
    out = output_dir(e2e_profile)
    assert image.exists() and image.suffix == ".qcow2"
    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert built["files"][0]["sha256"] == artifacts.sha256_file(image)
    assert not artifacts.Folders.of(out).candidate.exists(), "the candidate was left behind"
    info = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert info.returncode == 0, info.stdout + info.stderr
    assert built["files"][0]["virtual_bytes"] == parse_size(e2e_profile["base"]["disk_size"])


def test_manifest_lists_packages_and_timings(built):
    assert built["os"]["id"] == "ubuntu-24.04" and built["os"]["kernel"]
    assert "openssh-server" in built["packages"]["apt"]
    assert "jupyterhub" in {n.lower() for n in built["packages"]["pip"]["hub"]}
    assert "jupyterlab" in {n.lower() for n in built["packages"]["pip"]["user"]}
    assert "configurable-http-proxy" in built["packages"]["npm"]
    for stage in ("render", "rootfs", "envs", "config", "disk", "bake"):
        assert stage in built["timings_seconds"]


def test_the_manifest_says_that_ci_left_lynis_out(built):
    """CI's validation runs without the Lynis audit (tests/e2e/conftest.py): the record
    says so, with the reason, instead of a silent pass."""
    from hubkiln.validation.audit import LYNIS_SKIP_REASON

    assert built["validation"]["reports"]["lynis"] == {"status": "not-run",
                                                      "reason": LYNIS_SKIP_REASON}
