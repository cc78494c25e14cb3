"""Disk assembly: layout arithmetic, command lines, rendered configs and the GRUB
boot.img/core.img patches on synthetic sectors; plus sgdisk and mkfs.ext4 on a
small sparse file when those tools are installed (no root, no loop devices)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hubkiln.errors import BuildError
from hubkiln.stages.disk import (
    MIB,
    DiskLayout,
    Partition,
    check_partition_table,
    check_rootfs_fits,
    mkfs_ext4_command,
    mkfs_vfat_command,
    parse_sgdisk_print,
    plan_layout,
    sgdisk_command,
)
from hubkiln.stages.grub import (
    BLOCKLIST_OFFSET,
    CORE_LOAD_SEGMENT,
    ESP_LABEL,
    SECTOR,
    check_label,
    grub_mkimage_command,
    patch_boot_img,
    patch_core_img,
    render_early_config,
    render_fstab,
    render_grub_cfg,
)
from hubkiln.stages.images import qemu_img_convert_command

GIB = 1024 * MIB


def test_layout_of_an_8_gib_disk():
    layout = plan_layout(8 * GIB)
    assert layout.bios == Partition(1, 2048, 4095, "EF02", "bios-boot")
    assert layout.esp == Partition(2, 4096, 4096 + 204800 - 1, "EF00", "esp")
    assert layout.root.start == 208896
    assert layout.root.offset_bytes == 208896 * SECTOR
    # the root partition ends on a MiB boundary before the 33-sector backup GPT
    total = 8 * GIB // SECTOR
    assert (layout.root.end + 1) % 2048 == 0
    assert layout.root.end <= total - 34
    assert layout.esp.size_bytes == 100 * MIB
    assert layout.bios.size_bytes == MIB


@pytest.mark.parametrize("size", [8 * GIB + 1, 4 * GIB - 512])
def test_layout_needs_whole_mib(size):
    with pytest.raises(BuildError, match="MiB"):
        plan_layout(size)


def test_layout_refuses_a_disk_too_small_for_root():
    with pytest.raises(BuildError, match="root partition"):
        plan_layout(102 * MIB)


def test_sgdisk_command():
    layout = plan_layout(4 * GIB)
    cmd = sgdisk_command(Path("/d.raw"), layout)
    assert cmd[:2] == ["sgdisk", "--clear"]
    assert "--new=1:2048:4095" in cmd and "--typecode=1:EF02" in cmd
    assert "--typecode=2:EF00" in cmd and "--typecode=3:8300" in cmd
    assert f"--new=3:208896:{layout.root.end}" in cmd
    assert "-q" not in cmd  # sgdisk -q has returned 0 without writing partitions
    assert cmd[-1] == "/d.raw"


SGDISK_PRINT = """\
Disk /tmp/d.raw: 8388608 sectors, 4.0 GiB
Sector size (logical): 512 bytes
Disk identifier (GUID): 6ECAC5E8-462B-42C8-8401-FCBE23E09F21
Partition table holds up to 128 entries
Main partition table begins at sector 2 and ends at sector 33
First usable sector is 34, last usable sector is 8388574
Partitions will be aligned on 2048-sector boundaries
Total free space is 4029 sectors (2.0 MiB)

Number  Start (sector)    End (sector)  Size       Code  Name
   1            2048            4095   1024.0 KiB  EF02  bios-boot
   2            4096          208895   100.0 MiB   EF00  esp
   3          208896         8386559   3.9 GiB     8300  root
"""


def test_parse_and_check_sgdisk_print():
    layout = plan_layout(4 * GIB)
    assert parse_sgdisk_print(SGDISK_PRINT) == list(layout.partitions)
    check_partition_table(SGDISK_PRINT, layout)


def test_an_empty_table_fails_loudly():
    empty = SGDISK_PRINT.split("Number")[0] + "Number  Start (sector)    End (sector)  Size\n"
    with pytest.raises(BuildError, match="not the planned one"):
        check_partition_table(empty, plan_layout(4 * GIB))


def test_mkfs_ext4_writes_at_the_root_offset():
    layout = plan_layout(4 * GIB)
    cmd = mkfs_ext4_command(Path("/d.raw"), Path("/tree"), layout, "hubkiln-root")
    assert cmd[0] == "mkfs.ext4"
    assert cmd[cmd.index("-L"):cmd.index("-L") + 2] == ["-L", "hubkiln-root"]
    assert f"offset={layout.root.offset_bytes}" in cmd
    assert cmd[cmd.index("-d"):cmd.index("-d") + 2] == ["-d", "/tree"]
    assert cmd[-2:] == ["/d.raw", f"{layout.root.size_bytes // 1024}k"]


def test_mkfs_vfat_makes_a_fat32_esp_image():
    cmd = mkfs_vfat_command(Path("/esp.img"), plan_layout(4 * GIB))
    assert cmd == ["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, "-C", "/esp.img", "102400"]
    assert len(ESP_LABEL) <= 11


@pytest.mark.parametrize("label", ["hubkiln-root", "a", "x" * 16, "r.1_2"])
def test_good_labels(label):
    check_label(label)


@pytest.mark.parametrize("label", ["", "x" * 17, "a b", "a'b", "a/b"])
def test_bad_labels(label):
    with pytest.raises(BuildError):
        check_label(label)


def test_grub_mkimage_runs_in_the_tree():
    cmd = grub_mkimage_command("i386-pc", "/tmp/g/core.img", "/tmp/g/early.cfg", root=Path("/r"))
    assert cmd[:3] == ["chroot", "/r", "grub-mkimage"]
    assert cmd[3:5] == ["-O", "i386-pc"]
    assert "biosdisk" in cmd and "part_gpt" in cmd and "ext2" in cmd and "search" in cmd
    efi = grub_mkimage_command("x86_64-efi", "/o", "/c")
    assert efi[0] == "grub-mkimage" and "fat" in efi and "biosdisk" not in efi
    with pytest.raises(ValueError):
        grub_mkimage_command("arm64-efi", "/o", "/c")


def test_early_config_finds_root_by_label():
    text = render_early_config("hk-root")
    assert "search --no-floppy --set=root --label hk-root" in text
    assert "set prefix=($root)/boot/grub" in text


def test_grub_cfg_boots_the_distro_links_with_serial_console():
    text = render_grub_cfg("hk-root")
    assert "linux /boot/vmlinuz root=LABEL=hk-root ro console=tty1 console=ttyS0" in text
    assert "initrd /boot/initrd.img\n" in text
    assert "/boot/vmlinuz.old" in text


def test_fstab_mounts_root_by_label_and_esp_optionally():
    lines = [line.split("\t") for line in render_fstab("hk-root").splitlines()
             if not line.startswith("#")]
    assert lines[0][:3] == ["LABEL=hk-root", "/", "ext4"]
    assert lines[1][:3] == [f"LABEL={ESP_LABEL}", "/boot/efi", "vfat"]
    assert "nofail" in lines[1][3]
    assert "usrquota" in lines[0][3].split(",")  # hubkiln-quota.service finds / by it


def test_fstab_without_quotas_has_no_usrquota():
    assert "usrquota" not in render_fstab("hk-root", quotas=False)


def test_rootfs_must_fit_with_headroom():
    layout = plan_layout(2 * GIB)
    check_rootfs_fits(1 * GIB, layout)
    with pytest.raises(BuildError) as e:
        check_rootfs_fits(int(1.7 * GIB), layout)
    assert "base.disk_size" in e.value.hint


def test_convert_command():
    assert qemu_img_convert_command(Path("a.raw"), Path("a.qcow2")) == [
        "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"]
    assert qemu_img_convert_command(Path("a"), Path("b"), compress=True, zstd=True)[6:9] == [
        "-c", "-o", "cluster_size=2M,compression_type=zstd"]
    assert "-o" not in qemu_img_convert_command(Path("a"), Path("b"), fmt="vmdk", compress=True,
                                                zstd=True)


# ------------------------------------------------------------ GRUB patches


def synthetic_boot_img() -> bytes:
    img = bytearray(SECTOR)
    img[0:2] = b"\xeb\x63"
    struct.pack_into("<Q", img, 0x5C, 1)
    img[0x64] = 0xFF
    img[0x66:0x68] = b"\xeb\x05"
    img[0x1B8:0x1FE] = b"\xaa" * (0x1FE - 0x1B8)  # must be replaced by the disk's
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def synthetic_mbr() -> bytes:
    mbr = bytearray(SECTOR)
    mbr[0x1B8:0x1BC] = b"SIG!"
    mbr[0x1BE:0x1CE] = bytes(range(16))  # protective partition entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def test_patch_boot_img_points_at_core_and_keeps_the_table():
    out = patch_boot_img(synthetic_boot_img(), synthetic_mbr(), 2048)
    assert len(out) == SECTOR
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048
    assert out[0x66:0x68] == b"\x90\x90"
    assert out[0x64] == 0xFF
    assert out[0x1B8:0x1FE] == synthetic_mbr()[0x1B8:0x1FE]
    assert out[0:2] == b"\xeb\x63" and out[510:] == b"\x55\xaa"


def test_patch_boot_img_refuses_a_disk_without_mbr():
    with pytest.raises(BuildError, match="MBR"):
        patch_boot_img(synthetic_boot_img(), bytes(SECTOR), 2048)


def synthetic_core_img(size: int) -> bytes:
    img = bytearray(size)
    sectors = -(-size // SECTOR)
    struct.pack_into("<QHH", img, BLOCKLIST_OFFSET, 2, sectors - 1, CORE_LOAD_SEGMENT)
    return bytes(img)


def test_patch_core_img_loads_the_rest_from_the_next_sector():
    core = synthetic_core_img(100 * SECTOR + 17)
    out = patch_core_img(core, 2048)
    assert len(out) == 101 * SECTOR
    assert struct.unpack_from("<QHH", out, BLOCKLIST_OFFSET) == (2049, 100, CORE_LOAD_SEGMENT)
    assert out[SECTOR:] == core[SECTOR:].ljust(100 * SECTOR, b"\0")


def test_patch_core_img_refuses_an_unexpected_blocklist():
    core = bytearray(synthetic_core_img(10 * SECTOR))
    struct.pack_into("<Q", core, BLOCKLIST_OFFSET, 7)
    with pytest.raises(BuildError, match="blocklist"):
        patch_core_img(bytes(core), 2048)


# ------------------------------------------- real tools on a sparse file

HAVE_TOOLS = all(shutil.which(t) for t in ("sgdisk", "mkfs.ext4", "e2fsck", "dumpe2fs"))


@pytest.mark.skipif(not HAVE_TOOLS, reason="sgdisk or e2fsprogs is not installed")
def test_sgdisk_and_mkfs_at_offset_on_a_sparse_file(tmp_path):
    layout: DiskLayout = plan_layout(256 * MIB)
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as f:
        f.truncate(layout.size_bytes)
    subprocess.run(sgdisk_command(raw, layout), check=True, capture_output=True)
    printed = subprocess.run(["sgdisk", "-p", str(raw)], check=True, capture_output=True,
                             text=True).stdout
    check_partition_table(printed, layout)
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/hello").write_text("hello\n")
    subprocess.run(mkfs_ext4_command(raw, tree, layout, "t-root"), check=True,
                   capture_output=True)
    root = f"{raw}?offset={layout.root.offset_bytes}"
    fsck = subprocess.run(["e2fsck", "-fn", root], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    header = subprocess.run(["dumpe2fs", "-h", root], check=True, capture_output=True,
                            text=True).stdout
    # Never the ext4 quota feature: a kernel without quota_v2 could not mount / writable.
    features = next(line for line in header.splitlines()
                    if line.startswith("Filesystem features:")).split()
    assert "quota" not in features and "User quota inode:" not in header, features
    # the table is still intact after writing the file system
    printed = subprocess.run(["sgdisk", "-p", str(raw)], check=True, capture_output=True,
                             text=True).stdout
    check_partition_table(printed, layout)


def test_convert_reads_the_given_source_format():
    cmd = qemu_img_convert_command(Path("baked.qcow2"), Path("out.qcow2"), src_fmt="qcow2")
    assert cmd[2:4] == ["-f", "qcow2"]
