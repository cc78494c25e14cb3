"""The ci profile builds from scratch into a checksummed image that boots to SSH."""

from __future__ import annotations

import subprocess

import pytest

from hubkiln import artifacts
from hubkiln.profile import parse_size
from hubkiln.render import output_dir
from hubkiln.seed import (
    build_user_data,
    make_seed_iso,
    make_ssh_key,
    render_meta_data,
    render_user_data,
    write_seed_dir,
)
from hubkiln.vm import Vm, VmSpec, free_port

pytestmark = [pytest.mark.vm, pytest.mark.e2e]


def test_outputs_are_checksummed_and_listed(built, image, e2e_profile):
    out = output_dir(e2e_profile)
    assert image.exists() and image.suffix == ".qcow2"
    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert built["files"][0]["sha256"] == artifacts.sha256_file(image)
    assert not list(out.glob(".staging-*")), "a staging folder was left behind"
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


# SeaBIOS: the build's validation stage (`built`) boots the image that way already.
@pytest.mark.parametrize("firmware", ["uefi"])
def test_image_boots_to_ssh_with_a_nocloud_key(image, accelerator, tmp_path, firmware):
    key = tmp_path / "key"
    public = make_ssh_key(key, "hubkiln-e2e")
    folder = write_seed_dir(tmp_path / "seed",
                            render_user_data(build_user_data("tester", public)),
                            render_meta_data("hubkiln-e2e"))
    iso = make_seed_iso(folder, tmp_path / "seed.iso")
    spec = VmSpec(image=image, seed_iso=iso, serial_log=tmp_path / "serial.log",
                  accelerator=accelerator, forwards={22: free_port()}, firmware=firmware,
                  uefi_vars=tmp_path / "vars.fd")
    with Vm(spec) as vm:
        vm.wait_for_ssh("tester", key, timeout=600)
        result = vm.ssh("tester", key, "cat /etc/os-release; ls /opt/hubkiln")
        assert "Ubuntu 24.04" in result.stdout
        assert {"hub", "user"} <= set(result.stdout.split())
