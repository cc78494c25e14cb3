"""Every image format is written and passes its check: on a small disk, then the built image."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hubkiln.config.profile import VmResources
from hubkiln.errors import BuildError
from hubkiln.paths import output_dir
from hubkiln.stages import artifacts, formats

pytestmark = pytest.mark.e2e
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-io") is None,
                                    reason="qemu-utils is not installed (see host-packages.txt)")
SIZE = 64 << 20


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Path:
    """A 64 MiB qcow2 with data at its start, middle and end."""
    disk = tmp_path_factory.mktemp("disk") / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(SIZE)], check=True)
    for offset, pattern in ((0, "0x11"), (SIZE // 2, "0x22"), (SIZE - (1 << 20), "0x33")):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 1M",
                        str(disk)], check=True, capture_output=True)
    return disk


def write(fmt: str, source: Path, folder: Path) -> Path:
    return formats.write_format(
        fmt, source, folder / formats.artifact_name("hubkiln-small-1", fmt),
        virtual_bytes=SIZE, work=folder / f"work-{fmt}", log=folder / "outputs.log",
        name="hubkiln-small-1", os_id="ubuntu-24.04", resources=VmResources(2, 3072))


@needs_qemu_img
@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_each_format_of_a_small_disk_is_written_and_checked(small_disk, tmp_path, fmt):
    image = write(fmt, small_disk, tmp_path)
    assert image.exists() and not (tmp_path / f"work-{fmt}").exists()
    formats.check_artifact(fmt, image, virtual_bytes=SIZE, log=tmp_path / "recheck.log",
                           source=(small_disk, "qcow2"))


@needs_qemu_img
def test_the_ova_lists_the_ovf_first(small_disk, tmp_path):
    image = write("ova", small_disk, tmp_path)
    names = subprocess.run(["tar", "-tf", str(image)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert names == ["hubkiln-small-1.ovf", "hubkiln-small-1.mf", "hubkiln-small-1.vmdk"]


@needs_qemu_img
def test_a_truncated_vhd_fails_its_check(small_disk, tmp_path):
    image = write("vhd", small_disk, tmp_path)
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size - 512)
    with pytest.raises(BuildError):
        formats.check_artifact("vhd", image, virtual_bytes=SIZE, log=tmp_path / "check.log")


@needs_qemu_img
def test_a_changed_raw_fails_the_comparison(small_disk, tmp_path):
    image = write("raw", small_disk, tmp_path)
    with open(image, "r+b") as f:
        f.seek(SIZE // 2)
        f.write(b"\x00" * 512)
    with pytest.raises(BuildError):
        formats.check_artifact("raw", image, virtual_bytes=SIZE, log=tmp_path / "check.log",
                               source=(small_disk, "qcow2"))


@pytest.mark.vm
@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_the_build_publishes_each_listed_format_checked(built, e2e_profile, fmt):
    listed = formats.ordered_formats(e2e_profile["outputs"]["formats"])
    if fmt not in listed:
        pytest.skip(f"the {e2e_profile.name} profile's outputs.formats does not list {fmt}")
    out = output_dir(e2e_profile)
    entry = next(f for f in built["files"] if f["format"] == fmt)
    image = out / entry["name"]
    assert entry["sha256"] == artifacts.sha256_file(image)
    assert entry["bytes"] == image.stat().st_size
    formats.check_artifact(fmt, image, virtual_bytes=entry["virtual_bytes"],
                           log=out / "logs" / "e2e-formats.log")
    assert f"{entry['sha256']}  {entry['name']}" in (out / artifacts.SUMS).read_text()


@needs_qemu_img
def test_publish_outputs_lists_every_format_and_publishes_at_once(small_disk, tmp_path):
    import datetime as dt
    import json

    from hubkiln.config.profile import load_profile
    from hubkiln.stages.artifacts import BuildPaths
    from hubkiln.stages.outputs import store_outputs

    profile_file = tmp_path / "small.yaml"
    profile_file.write_text(
        f"extends: {Path(__file__).resolve().parents[2] / 'profiles' / 'ci.yaml'}\n"
        "name: small\ndescription: formats test\nversion: '1'\nbase:\n  disk_size: 64M\n"
        "outputs:\n  formats: [ova, gce, vhd, raw]\n")
    profile = load_profile(profile_file)
    out = tmp_path / "output"
    (out / "logs").mkdir(parents=True)
    paths = BuildPaths(out=out, logs=out / "logs", work=tmp_path / "work", cache=tmp_path)
    manifest = store_outputs(profile, small_disk, paths, dt.datetime.now(dt.UTC), {}, {}, {},
                               "", {})
    assert [f["format"] for f in manifest["files"]] == ["qcow2", "ova", "gce", "vhd", "raw"]
    assert json.loads((out / "manifest.json").read_text())["files"] == manifest["files"]
    for entry in manifest["files"]:
        assert set(entry) == {"name", "format", "sha256", "bytes", "virtual_bytes"}
        assert entry["virtual_bytes"] == SIZE and entry["bytes"] == (out / entry["name"]).stat(
        ).st_size
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                          text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f["name"] for f in manifest["files"]]
        + ["SHA256SUMS", "manifest.json", "README.md", "logs"])
