"""A build keeps the last good image until the new one has passed validation.

The rules (which folder a finished candidate goes to, what an interrupted build
left) run on folders in a temporary directory; then `build.build` itself runs
with every heavy step replaced by a stub that writes a few bytes, so that the
order of outputs, validation and publication is the real one. No VM boots.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from hubkiln import paths
from hubkiln.config.profile import display_path, load_profile
from hubkiln.deliver.local import find_built_image
from hubkiln.errors import BuildError
from hubkiln.machine import accel
from hubkiln.stages import artifacts, disk, formats, images
from hubkiln.stages import pipeline as build
from hubkiln.validation import engines, imagetest


def make_build(folder: Path, status: str, image: str = "old.qcow2") -> None:
    """A finished build in `folder`: an image, a log and a manifest with `status`."""
    (folder / "logs").mkdir(parents=True)
    (folder / image).write_bytes(b"image of " + folder.name.encode())
    (folder / "logs" / "bake.log").write_text("baked\n")
    artifacts.write_json(folder / artifacts.MANIFEST, {
        "files": [{"name": image, "format": "qcow2"}], "validation": {"status": status}})


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def folders(tmp_path) -> artifacts.Folders:
    return artifacts.Folders.of(tmp_path / "output" / "ci")


# --- which folder goes where ----------------------------------------------------


def test_the_folders_are_named_after_the_current_one(folders):
    out = folders.current.parent
    assert (folders.candidate, folders.failed, folders.aside) == (
        out / "ci.candidate", out / "ci.failed", out / "ci.previous")


@pytest.mark.parametrize(("manifest", "goes_to"), [
    ({"validation": {"status": "passed"}}, "current"),
    ({"validation": {"status": "not-run"}}, "current"),  # --skip-validation, explicit
    ({"validation": {"status": "failed"}}, "failed"),
    ({"files": []}, "failed"),
    (None, "failed"),
])
def test_only_a_validated_or_explicitly_unvalidated_candidate_becomes_current(
        folders, manifest, goes_to):
    assert artifacts.destination(folders, manifest) == getattr(folders, goes_to)


@pytest.mark.parametrize(("previous", "says"), [
    ({"validation": {"status": "passed"}}, "the last good image is still in {current}/"),
    ({"validation": {"status": "not-run"}},
     "the previous image (validation: not-run) is still in {current}/"),
    (None, "no image is in {current}/"),
])
def test_the_failure_says_where_both_images_are(folders, previous, says):
    note = build.kept_note(folders, previous)
    assert note == (says.format(current=display_path(folders.current))
                    + f"; the failed one is in {display_path(folders.failed)}/")


# --- the moves ------------------------------------------------------------------


def test_a_passed_candidate_replaces_the_current_folder_and_the_failed_one(folders):
    make_build(folders.current, "passed")
    make_build(folders.failed, "failed")
    make_build(folders.candidate, "passed", image="new.qcow2")
    new = contents(folders.candidate)
    assert artifacts.settle(folders) == folders.current
    assert contents(folders.current) == new
    assert not folders.candidate.exists() and not folders.aside.exists()
    assert not folders.failed.exists()


def test_a_failed_candidate_replaces_the_failed_folder_only(folders):
    make_build(folders.current, "passed")
    make_build(folders.failed, "failed", image="older.qcow2")
    make_build(folders.candidate, "failed", image="new.qcow2")
    good, failed = contents(folders.current), contents(folders.candidate)
    assert artifacts.settle(folders) == folders.failed
    assert contents(folders.current) == good
    assert contents(folders.failed) == failed


def test_a_first_build_becomes_current_without_a_previous_folder(folders):
    make_build(folders.candidate, "passed", image="new.qcow2")
    assert artifacts.settle(folders) == folders.current
    assert (folders.current / "new.qcow2").exists()


def test_the_next_build_removes_a_stale_candidate(folders):
    make_build(folders.current, "passed")
    make_build(folders.candidate, "not-run", image="half.qcow2")
    good = contents(folders.current)
    artifacts.start_candidate(folders)
    assert list(folders.candidate.iterdir()) == []
    assert contents(folders.current) == good


def test_a_swap_cut_short_between_its_renames_is_undone(folders):
    """Killed after the current folder went aside, before the candidate took its place."""
    make_build(folders.aside, "passed")
    good = contents(folders.aside)
    make_build(folders.candidate, "passed", image="new.qcow2")
    artifacts.start_candidate(folders)
    assert contents(folders.current) == good
    assert not folders.aside.exists()


def test_a_swap_cut_short_after_its_renames_keeps_the_new_folder(folders):
    make_build(folders.current, "passed", image="new.qcow2")
    make_build(folders.aside, "passed")
    new = contents(folders.current)
    artifacts.start_candidate(folders)
    assert contents(folders.current) == new
    assert not folders.aside.exists()


# --- the build, with stubs for the heavy steps --------------------------------


@pytest.fixture
def stub_build(monkeypatch, tmp_path, folders):
    """Run `build.build("ci")` in tmp_path with fake heavy steps; return the validations
    it asked for (one dict of arguments each). `outcome` is the validation's status, or
    an exception that it raises."""
    asked: list[dict] = []
    outcome: dict[str, object] = {}
    real = inspect.signature(imagetest.validate_image)

    def validate_image(profile, image, **kwargs):
        real.bind(profile, image, **kwargs)  # called as the real one can be
        asked.append({"image": image, **kwargs})
        (kwargs["logs"] / "validate.log").write_text("validated\n")
        if isinstance(outcome["status"], BaseException):
            raise outcome["status"]
        return {"status": outcome["status"], "failed": int(outcome["status"] != "passed"),
                "failures": ["tests/image/test_x.py::test_x: broke"], "log": "logs/validate.log"}

    def write_file(data: bytes):
        def write(*args, **kwargs):
            dest = next(a for a in reversed(args) if isinstance(a, Path))
            dest.write_bytes(data)
            return dest
        return write

    def bake(profile, template_dir, disk_image, paths, accelerator, progress):
        (paths.work / "packer-out").mkdir()
        return write_file(b"baked")(paths.work / "packer-out" / "baked.qcow2")

    def noop(*args, **kwargs):
        return None

    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(paths, "OUTPUT_DIR", folders.current.parent)
    for name in ("check_host_tools", "copy_tree", "stage_content", "provision", "prune_cache"):
        monkeypatch.setattr(build, name, noop)
    monkeypatch.setattr(build, "ensure_cached", lambda *args, **kwargs: True)
    monkeypatch.setattr(build, "bake", bake)
    monkeypatch.setattr(accel, "choose_accelerator",
                        lambda name=None: accel.AccelChoice("tcg", "test"))
    monkeypatch.setattr(disk, "assemble_disk", write_file(b"raw"))
    monkeypatch.setattr(images, "convert_image", write_file(b"disk"))
    monkeypatch.setattr(formats, "write_format", write_file(b"new image"))
    monkeypatch.setattr(imagetest, "validate_image", validate_image)

    def run(status: str | BaseException = "passed", *, validate: bool = True) -> dict:
        outcome["status"] = status
        return build.build("ci", validate=validate)

    run.asked = asked
    return run


def test_a_build_that_passes_validation_replaces_the_last_image(stub_build, folders):
    make_build(folders.current, "passed")
    manifest = stub_build("passed")
    assert stub_build.asked[0]["image"].parent == folders.candidate
    assert stub_build.asked[0]["logs"] == folders.candidate / "logs"
    assert artifacts.read_manifest(folders.current) == manifest
    assert manifest["validation"]["status"] == "passed"
    image = find_built_image(load_profile("ci"), "ci", output_root=folders.current.parent)
    assert image.read_bytes() == b"new image"
    assert not (folders.current / "old.qcow2").exists()
    assert (folders.current / "packer").is_dir()
    assert not folders.candidate.exists() and not folders.failed.exists()


def test_a_build_that_fails_validation_keeps_the_last_good_image(stub_build, folders):
    make_build(folders.current, "passed")
    good = contents(folders.current)
    with pytest.raises(BuildError) as info:
        stub_build("failed")
    assert contents(folders.current) == good
    failed = artifacts.read_manifest(folders.failed)
    assert failed["validation"]["status"] == "failed"
    assert (folders.failed / engines.FAILED_MARKER).exists()
    assert (folders.failed / "logs" / "validate.log").exists()
    assert "test_x" in info.value.message
    assert info.value.hint == (
        f"see {display_path(folders.failed / 'logs' / 'validate.log')}; the last good image "
        f"is still in {display_path(folders.current)}/; the failed one is in "
        f"{display_path(folders.failed)}/")
    assert not folders.candidate.exists()


def test_skipping_validation_keeps_the_image_marked_not_validated(stub_build, folders):
    make_build(folders.current, "passed")
    manifest = stub_build(validate=False)
    assert stub_build.asked == []
    assert artifacts.read_manifest(folders.current)["validation"] == {"status": "not-run"}
    assert manifest["validation"] == {"status": "not-run"}
    assert not (folders.current / engines.FAILED_MARKER).exists()


def test_an_interrupted_build_leaves_the_last_image_current(stub_build, folders):
    make_build(folders.current, "passed")
    good = contents(folders.current)
    with pytest.raises(KeyboardInterrupt):
        stub_build(KeyboardInterrupt())
    assert contents(folders.current) == good
    image = find_built_image(load_profile("ci"), "ci", output_root=folders.current.parent)
    assert image == folders.current / "old.qcow2"
    assert folders.candidate.exists() and not folders.failed.exists()
    stub_build("passed")
    assert not folders.candidate.exists()
    assert artifacts.read_manifest(folders.current)["validation"]["status"] == "passed"
