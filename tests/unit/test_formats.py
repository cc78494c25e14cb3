"""Format command lines, the OVF, the OVA manifest and the format checks' parsers."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubkiln.config import profile
from hubkiln.config.profile import VmResources
from hubkiln.stages import formats, images, ova

GIB = 1 << 30
SRC, DEST = Path("/w/baked.qcow2"), Path("/s/out")


def test_qcow2_comes_first_and_is_always_written():
    assert formats.ordered_formats(["gce", "qcow2", "vhd"]) == ["qcow2", "gce", "vhd"]
    assert formats.ordered_formats(["raw"]) == ["qcow2", "raw"]


def test_artifact_names_carry_the_format():
    names = {f: formats.artifact_name("hubkiln-ci-2026-fall", f) for f in formats.FORMATS}
    assert names == {"qcow2": "hubkiln-ci-2026-fall.qcow2", "raw": "hubkiln-ci-2026-fall.raw",
                     "vhd": "hubkiln-ci-2026-fall.vhd", "ova": "hubkiln-ci-2026-fall.ova",
                     "gce": "hubkiln-ci-2026-fall.gce.tar.gz"}


def test_the_schema_and_the_formats_table_agree():
    from hubkiln.config.profile import load_schema

    enum = load_schema()["properties"]["outputs"]["properties"]["formats"]["items"]["enum"]
    assert set(enum) == set(formats.FORMATS) == set(formats.SUFFIXES)


def test_vm_resources_add_the_hub_to_one_student():
    assert profile.vm_resources({"memory": "2G", "cpu": 1}) == VmResources(2, 3072)
    assert profile.vm_resources({"memory": "512M", "cpu": 0.5}) == VmResources(2, 2048)
    assert profile.vm_resources({"memory": "8G", "cpu": 3.5}) == VmResources(4, 9216)


def test_aligned_size_rounds_up_to_a_mib():
    assert formats.aligned_size(4 * GIB) == 4 * GIB
    assert formats.aligned_size(4 * GIB + 1) == 4 * GIB + images.MIB


def test_raw_command_is_a_plain_convert():
    assert formats.raw_command(SRC, DEST) == ["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                                              "/w/baked.qcow2", "/s/out"]


def test_vmdk_is_stream_optimized():
    cmd = images.vmdk_command(SRC, DEST)
    assert cmd[cmd.index("-O") + 1] == "vmdk"
    assert "subformat=streamOptimized" in cmd[cmd.index("-o") + 1].split(",")


def test_vhd_is_fixed_with_the_exact_size():
    (cmd,) = formats.vhd_commands(SRC, DEST, 4 * GIB, Path("/w/overlay.qcow2"))
    assert cmd == ["qemu-img", "convert", "-f", "qcow2", "-O", "vpc", "-o",
                   "subformat=fixed,force_size=on", "/w/baked.qcow2", "/s/out"]


def test_vhd_of_an_unaligned_disk_goes_through_an_aligned_overlay():
    create, convert = formats.vhd_commands(SRC, DEST, 4 * GIB + 512, Path("/w/overlay.qcow2"))
    assert create[:2] == ["qemu-img", "create"] and create[-1] == str(4 * GIB + images.MIB)
    assert "-b" in create and create[create.index("-b") + 1] == "/w/baked.qcow2"
    assert convert[convert.index("-f") + 1] == "qcow2" and convert[-2:] == [
        "/w/overlay.qcow2", "/s/out"]


def test_gce_tar_is_sparse_oldgnu_gzip_of_disk_raw():
    cmd = formats.gce_tar_command(Path("/w"), Path("/s/x.gce.tar.gz"))
    assert cmd[0] == "tar" and "--format=oldgnu" in cmd and "--sparse" in cmd
    assert any(c.startswith("--use-compress-program=gzip") for c in cmd)
    assert cmd[-3:] == ["-C", "/w", "disk.raw"]


def test_ova_tar_is_ustar_in_the_given_order():
    cmd = ova.ova_tar_command(Path("/w"), Path("/s/x.ova"), ["x.ovf", "x.mf", "x.vmdk"])
    assert "--format=ustar" in cmd and cmd[-3:] == ["x.ovf", "x.mf", "x.vmdk"]


def test_check_info_names_every_mismatch():
    problems = formats.check_info({"format": "raw", "virtual-size": 5}, fmt="vpc",
                                  virtual_bytes=4 * GIB, name="x.vhd")
    assert len(problems) == 2 and all(p.startswith("x.vhd: ") for p in problems)
    assert formats.check_info({"format": "vpc", "virtual-size": 4 * GIB}, fmt="vpc",
                              virtual_bytes=4 * GIB, name="x.vhd") == []


def test_populated_bytes_count_data_only():
    entries = [{"start": 0, "length": 100, "data": True, "zero": False},
               {"start": 100, "length": 50, "data": False, "zero": True},
               {"start": 150, "length": 10, "data": True, "zero": True}]
    assert images.populated_bytes(entries) == 100


def vhd_footer(size: int, disk_type: int = 2, cookie: bytes = b"conectix") -> bytes:
    footer = bytearray(512)
    footer[:8] = cookie
    footer[40:56] = struct.pack(">QQ", size, size)
    footer[60:64] = struct.pack(">I", disk_type)
    return bytes(footer)


def test_a_fixed_vhd_footer_passes():
    footer = formats.parse_vhd_footer(vhd_footer(4 * GIB))
    assert formats.check_vhd(footer, 4 * GIB + 512, virtual_bytes=4 * GIB, name="x") == []


def test_a_dynamic_vhd_of_the_wrong_size_fails_with_each_problem():
    footer = formats.parse_vhd_footer(vhd_footer(4 * GIB + 1, disk_type=3))
    problems = formats.check_vhd(footer, 1000, virtual_bytes=4 * GIB + 1, name="x")
    assert len(problems) == 3
    assert any("fixed" in p for p in problems) and any("whole MiB" in p for p in problems)


def test_tar_listing_is_parsed():
    text = "-rw-r--r-- 0/0      4294967296 2026-11-25 23:06 disk.raw\n"
    entries = formats.parse_tar_listing(text)
    assert entries == [("disk.raw", 4 * GIB)]
    assert formats.check_gce_listing(entries, virtual_bytes=4 * GIB, name="x") == []
    assert formats.check_gce_listing([("disk.img", 1)], virtual_bytes=4 * GIB, name="x")


def render(**overrides) -> str:
    values = dict(name="hubkiln-ci-1", os_id="ubuntu-24.04", vmdk_name="hubkiln-ci-1.vmdk",
                  vmdk_bytes=400_000_000, capacity_bytes=4 * GIB, populated=1_250_000_000,
                  resources=VmResources(2, 3072))
    return ova.render_ovf(**{**values, **overrides})


def test_the_ovf_parses_back_to_what_it_describes():
    summary = ova.parse_ovf(render())
    assert summary.files == {"hubkiln-ci-1.vmdk": 400_000_000}
    assert (summary.capacity_bytes, summary.populated_bytes) == (4 * GIB, 1_250_000_000)
    assert (summary.cpus, summary.memory_mib, summary.nics) == (2, 3072, 1)
    assert summary.disk_attached and summary.disk_format == images.VMDK_STREAM_FORMAT
    assert ova.check_ovf(summary, vmdk_name="hubkiln-ci-1.vmdk", vmdk_bytes=400_000_000,
                             capacity_bytes=4 * GIB, name="x") == []


def test_the_ovf_qualifies_its_attributes_and_orders_rasd_elements():
    root = ET.fromstring(render())
    ovf = "{http://schemas.dmtf.org/ovf/envelope/1}"
    file_el = root.find(f"{ovf}References/{ovf}File")
    assert file_el is not None and file_el.get(f"{ovf}href") == "hubkiln-ci-1.vmdk"
    for item in root.iter(f"{ovf}Item"):
        keys = [child.tag.split("}")[1] for child in item]
        assert keys == sorted(keys)


def test_the_ovf_names_the_debian_guest():
    assert 'ovf:id="96"' in render(os_id="debian-12")


def test_check_ovf_catches_a_disagreeing_vmdk():
    summary = ova.parse_ovf(render())
    problems = ova.check_ovf(summary, vmdk_name="other.vmdk", vmdk_bytes=1,
                                 capacity_bytes=8 * GIB, name="x.ova")
    assert len(problems) == 2


def test_parse_ovf_rejects_what_is_not_an_ovf():
    with pytest.raises(ValueError):
        ova.parse_ovf("<Envelope/>")
    with pytest.raises(ET.ParseError):
        ova.parse_ovf("not xml")


def test_ova_manifest_round_trips_and_is_checked():
    digests = {"a.ovf": "1" * 64, "a.vmdk": "2" * 64}
    text = ova.render_ova_manifest(digests)
    assert text.splitlines()[0] == f"SHA256(a.ovf)= {'1' * 64}"
    assert ova.parse_ova_manifest(text) == digests
    members = [("a.ovf", "1" * 64), ("a.mf", "3" * 64), ("a.vmdk", "2" * 64)]
    assert ova.check_ova_members(members, digests, stem="a", name="a.ova") == []
    shuffled = [members[2], members[0], members[1]]
    assert ova.check_ova_members(shuffled, digests, stem="a", name="a.ova")
    assert ova.check_ova_members(members, {**digests, "a.vmdk": "9" * 64}, stem="a",
                                     name="a.ova")
