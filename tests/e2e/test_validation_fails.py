"""A deliberately broken image fails `invoke build` at validation, and says what broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln import artifacts
from hubkiln.build import build
from hubkiln.errors import BuildError
from hubkiln.imagetest import FAILED_MARKER
from hubkiln.profile import load_profile
from hubkiln.render import output_dir

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

BROKEN = Path(__file__).parent / "fixtures" / "broken-hub.yaml"


@pytest.fixture(scope="module")
def broken(built):
    """(error, manifest, output folder) of building the broken profile.

    The good image passed validation first (`built`). Only the student-server
    tests run here (`-k`), stopping at the first failure (`-x`): the point is the
    build's verdict and its message, not the whole suite a second time.
    """
    assert built["validation"]["status"] == "passed"
    # The hub waits up to its spawn timeout (300 s) for a server that will never
    # answer; the tests need not wait that long to call it broken.
    with pytest.MonkeyPatch.context() as env, pytest.raises(BuildError) as info:
        env.setenv("HUBKILN_TEST_SPAWN_TIMEOUT", "150")
        build(str(BROKEN), validation_args=["-x", "-k", "test_student_server"])
    out = output_dir(load_profile(BROKEN))
    return info.value, artifacts.read_manifest(out), out


def test_broken_hub_setting_fails_the_build_at_validation(broken):
    error, manifest, out = broken
    message = str(error)
    assert "failed validation" in message
    assert "test_student_server" in message, message
    assert "student1's server" in message, message
    assert "not ready" in message or "failed to start" in message, message
    assert manifest["validation"]["status"] == "failed"
    assert any("test_student_server" in f for f in manifest["validation"]["failures"])
    assert (out / FAILED_MARKER).exists()


def test_the_broken_build_reused_the_cached_layers(broken):
    """Only a hub setting differs from ci: the OS and environment layers are shared."""
    _, manifest, _ = broken
    assert manifest["cache"] == {"rootfs": "hit", "envs": "hit"}
    assert manifest["timings_seconds"]["rootfs"] == 0.0
