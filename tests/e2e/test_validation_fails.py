"""A deliberately broken image fails `invoke build` at validation, says what broke, and
leaves the last good image current."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hubkiln.config.profile import display_path, load_profile
from hubkiln.deliver.local import find_built_image
from hubkiln.errors import BuildError
from hubkiln.paths import output_dir
from hubkiln.stages import artifacts
from hubkiln.stages.pipeline import build
from hubkiln.validation.engines import FAILED_MARKER

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

BROKEN = Path(__file__).parent / "fixtures" / "broken-hub.yaml"


def plant_good_build(folder: Path) -> dict[str, bytes]:
    """Stand in a last good build of the broken profile (which never passes, so there is
    none): an image file and a manifest that says it passed. Return its files' bytes."""
    folder.mkdir(parents=True)
    (folder / "hubkiln-ci-broken-hub-good.qcow2").write_bytes(b"the last good image\n")
    artifacts.write_json(folder / artifacts.MANIFEST, {
        "profile": "ci-broken-hub", "validation": {"status": "passed"},
        "files": [{"name": "hubkiln-ci-broken-hub-good.qcow2", "format": "qcow2"}]})
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def broken(built):
    """(error, manifest of the failed build, the profile's folders, the planted good
    build's files) of building the broken profile over a planted good build.

    The good image passed validation first (`built`). Only the student-server
    tests run here (`-k`), stopping at the first failure (`-x`): the point is the
    build's verdict, its message and where it leaves the images, not the whole
    suite a second time.
    """
    assert built["validation"]["status"] == "passed"
    folders = artifacts.Folders.of(output_dir(load_profile(BROKEN)))
    for folder in (folders.current, folders.candidate, folders.failed, folders.aside):
        if folder.exists():
            shutil.rmtree(folder)  # left by an earlier run
    planted = plant_good_build(folders.current)
    # The hub waits up to its spawn timeout (300 s) for a server that will never
    # answer; the tests need not wait that long to call it broken.
    with pytest.MonkeyPatch.context() as env, pytest.raises(BuildError) as info:
        env.setenv("HUBKILN_TEST_SPAWN_TIMEOUT", "150")
        build(str(BROKEN), validation_args=["-x", "-k", "test_student_server"])
    return info.value, artifacts.read_manifest(folders.failed), folders, planted


def test_broken_hub_setting_fails_the_build_at_validation(broken):
    error, manifest, folders, _ = broken
    message = str(error)
    assert "failed validation" in message
    assert "test_student_server" in message, message
    assert "student1's server" in message, message
    assert "not ready" in message or "failed to start" in message, message
    assert manifest["validation"]["status"] == "failed"
    assert any("test_student_server" in f for f in manifest["validation"]["failures"])
    assert (folders.failed / FAILED_MARKER).exists()
    assert (folders.failed / manifest["validation"]["log"]).exists()


def test_the_last_good_image_survives_the_failed_build(broken):
    error, _, folders, planted = broken
    assert {p.name: p.read_bytes() for p in folders.current.iterdir()} == planted
    image = find_built_image(load_profile(BROKEN), str(BROKEN))
    assert image == folders.current / "hubkiln-ci-broken-hub-good.qcow2"
    assert (f"the last good image is still in {display_path(folders.current)}/; "
            f"the failed one is in {display_path(folders.failed)}/") in str(error)
    assert not folders.candidate.exists()


def test_the_broken_build_reused_the_cached_layers(broken):
    """Only a hub setting differs from ci: the OS and environment layers are shared."""
    _, manifest, _, _ = broken
    assert manifest["cache"] == {"rootfs": "hit", "envs": "hit"}
    assert manifest["timings_seconds"]["rootfs"] == 0.0
