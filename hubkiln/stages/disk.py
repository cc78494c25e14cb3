"""Assemble a bootable GPT disk image from a root filesystem tree, without loop
devices, mounts or udev.

Layout (512-byte sectors, 1 MiB aligned): partition 1 is a 1 MiB BIOS boot
partition holding GRUB's i386-pc core.img, partition 2 a 100 MiB FAT32 EFI
system partition holding GRUB as EFI/BOOT/BOOTX64.EFI (the removable-media
path, so firmware needs no boot entry), partition 3 the ext4 root filesystem
filling the rest. Both GRUB images are made with the tree's own grub-mkimage
(run in a chroot, so its version matches the modules copied to /boot/grub),
embed a config that finds the root file system by label, then load the static
/boot/grub/grub.cfg. That config boots /boot/vmlinuz and /boot/initrd.img,
the links the kernel packages keep current, so kernel upgrades in the VM need
no update-grub (if update-grub runs anyway it rewrites grub.cfg with
grub-mkconfig, fed by /etc/default/grub.d/hubkiln.cfg).

The steps: sgdisk writes the table (then `sgdisk -p` is parsed: sgdisk has
returned 0 without writing partitions), mkfs.ext4 -d writes the tree straight
into the disk file at the root partition's offset, mkfs.vfat + mtools make the
ESP, and boot.img/core.img are patched as grub-bios-setup would and written.

Limits, honestly:
- x86_64 only, BIOS (SeaBIOS) and UEFI without Secure Boot (GRUB is unsigned).
- Needs root (the tree holds root-only files and grub-mkimage runs in a
  chroot) and host tools: sgdisk, mkfs.ext4 (e2fsprogs >= 1.43), mkfs.vfat,
  mtools, qemu-img.
- Writes boot files into the tree (/etc/fstab, /boot/grub, /boot/efi,
  /etc/default/grub.d/hubkiln.cfg) before imaging it.
- GRUB on disk is never updated from inside the VM (no grub-install there).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubkiln.errors import BuildError, PreflightError
from hubkiln.proc import run
from hubkiln.stages.chroot import check_no_mounts_under
from hubkiln.stages.grub import (
    ESP_LABEL,
    SECTOR,
    build_grub_images,
    check_label,
    install_boot_files,
    patch_boot_img,
    patch_core_img,
)
from hubkiln.stages.rootfs import check_rootfs

MIB = 1024 * 1024
ALIGN_SECTORS = MIB // SECTOR
BIOS_BOOT_BYTES = 1 * MIB
ESP_BYTES = 100 * MIB
#: Backup GPT at the end of the disk: 32 sectors of entries + the header.
GPT_BACKUP_SECTORS = 33
#: Room the root filesystem needs beyond the tree: ext4 metadata, journal,
#: and space for first-boot writes.
ROOT_HEADROOM_FACTOR = 1.15
ROOT_HEADROOM_BYTES = 256 * MIB


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Partition:
    """One GPT partition; `start` and `end` are inclusive sector numbers."""

    number: int
    start: int
    end: int
    type_code: str
    name: str

    @property
    def offset_bytes(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return (self.end - self.start + 1) * SECTOR


@dataclass(frozen=True)
class DiskLayout:
    """The three partitions of a hubkiln disk."""

    size_bytes: int
    bios: Partition
    esp: Partition
    root: Partition

    @property
    def partitions(self) -> tuple[Partition, Partition, Partition]:
        return (self.bios, self.esp, self.root)


def plan_layout(size_bytes: int) -> DiskLayout:
    """Return the partition layout of a disk of `size_bytes` (a whole number of MiB)."""
    if size_bytes % MIB:
        raise BuildError(
            f"disk size {size_bytes} bytes is not a whole number of MiB",
            hint="set base.disk_size in MiB or GiB (e.g. 8G)",
        )
    total = size_bytes // SECTOR
    bios_start = ALIGN_SECTORS
    esp_start = bios_start + BIOS_BOOT_BYTES // SECTOR
    root_start = esp_start + ESP_BYTES // SECTOR
    # end the root partition on a MiB boundary before the backup GPT
    root_end = (total - GPT_BACKUP_SECTORS - 1) // ALIGN_SECTORS * ALIGN_SECTORS - 1
    if root_end - root_start + 1 < ALIGN_SECTORS:
        raise BuildError(
            f"disk size {size_bytes} bytes leaves no room for the root partition",
            hint="raise base.disk_size",
        )
    return DiskLayout(
        size_bytes=size_bytes,
        bios=Partition(1, bios_start, esp_start - 1, "EF02", "bios-boot"),
        esp=Partition(2, esp_start, root_start - 1, "EF00", "esp"),
        root=Partition(3, root_start, root_end, "8300", "root"),
    )


def sgdisk_command(raw: Path, layout: DiskLayout) -> list[str]:
    """Return the sgdisk argv that writes `layout`'s GPT (and protective MBR) to `raw`."""
    cmd = ["sgdisk", "--clear"]
    for p in layout.partitions:
        cmd += [
            f"--new={p.number}:{p.start}:{p.end}",
            f"--typecode={p.number}:{p.type_code}",
            f"--change-name={p.number}:{p.name}",
        ]
    return [*cmd, str(raw)]


_SGDISK_ROW = re.compile(
    r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+\S+\s+([0-9A-F]{4})\s*(.*?)\s*$"
)


def parse_sgdisk_print(text: str) -> list[Partition]:
    """Return the partitions listed in the output of `sgdisk -p`."""
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("Number"):
            in_table = True
            continue
        m = _SGDISK_ROW.match(line) if in_table else None
        if m:
            rows.append(
                Partition(int(m[1]), int(m[2]), int(m[3]), m[4], m[5])
            )
    return rows


def check_partition_table(sgdisk_print: str, layout: DiskLayout) -> None:
    """Fail unless `sgdisk -p` output shows exactly `layout`'s partitions."""
    found = parse_sgdisk_print(sgdisk_print)
    if found != list(layout.partitions):
        raise BuildError(
            "the partition table written by sgdisk is not the planned one:\n"
            f"  planned: {list(layout.partitions)}\n  found:   {found}\n{sgdisk_print}",
            hint="check the sgdisk version and the disk log",
        )


def mkfs_ext4_command(raw: Path, rootfs: Path, layout: DiskLayout, label: str) -> list[str]:
    """Return the mkfs.ext4 argv that writes `rootfs` as an ext4 filesystem into
    `raw` at the root partition's offset."""
    check_label(label)
    return [
        "mkfs.ext4",
        "-F",
        "-q",
        "-L", label,
        "-b", "4096",
        # GRUB 2.06 (Debian 12) refuses file systems with this incompat feature
        "-O", "^metadata_csum_seed",
        "-E", f"offset={layout.root.offset_bytes}",
        "-d", str(rootfs),
        str(raw),
        f"{layout.root.size_bytes // 1024}k",
    ]  # fmt: skip


def mkfs_vfat_command(esp_image: Path, layout: DiskLayout) -> list[str]:
    """Return the mkfs.vfat argv that creates the ESP as the new file `esp_image`."""
    return [
        "mkfs.vfat", "-F", "32", "-n", ESP_LABEL, "-C", str(esp_image),
        str(layout.esp.size_bytes // 1024),
    ]  # fmt: skip


# ------------------------------------------------------- GRUB BIOS patching


# ------------------------------------------------------------ conversion


# ---------------------------------------------------------- side effects

HOST_TOOLS = {
    "sgdisk": "gdisk",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "chroot": "coreutils",
}


def check_disk_host() -> None:
    """Fail with PreflightError unless root and the host tools are there."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise PreflightError(
            "host tools for disk assembly are missing",
            hint=f"apt-get install {' '.join(missing)}",
        )
    if os.geteuid() != 0:
        raise PreflightError("assembling a disk needs root", hint="run the build as root")


def tree_usage_bytes(root: Path) -> int:
    """Return the disk space the files under `root` use (like `du -sx`, in bytes)."""
    root_dev = root.stat().st_dev
    seen: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != root_dev:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
    return total


def check_rootfs_fits(usage_bytes: int, layout: DiskLayout) -> None:
    """Fail if a tree using `usage_bytes` does not fit the root partition with headroom."""
    needed = int(usage_bytes * ROOT_HEADROOM_FACTOR) + ROOT_HEADROOM_BYTES
    if needed > layout.root.size_bytes:
        raise BuildError(
            f"the root filesystem needs about {needed // MIB} MiB but the root "
            f"partition has {layout.root.size_bytes // MIB} MiB",
            hint=f"raise base.disk_size to at least {math.ceil((needed + 110 * MIB) / 2**30)}G",
        )


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _copy_file_at(src: Path, dest: Path, offset: int) -> None:
    with open(src, "rb") as fin, open(dest, "r+b") as fout:
        fout.seek(offset)
        shutil.copyfileobj(fin, fout, 4 * MIB)


def assemble_disk(
    rootfs: Path, raw: Path, *, size_bytes: int, label: str = "hubkiln-root", log: Path,
    quotas: bool = True,
) -> None:
    """Make `raw` a bootable (BIOS and UEFI) raw disk image of `size_bytes` holding `rootfs`.

    `quotas`: `usrquota` in the root's fstab line (see `render_fstab`). Nothing in
    the file system itself: quotas are turned on at boot, and a kernel that cannot
    do them boots all the same.

    Writes boot files into `rootfs` first (see `install_boot_files`). The image
    is built as a temporary file next to `raw` and renamed when complete.
    """
    check_disk_host()
    check_label(label)
    rootfs = rootfs.resolve()
    check_no_mounts_under(rootfs)
    check_rootfs(rootfs)
    layout = plan_layout(size_bytes)
    check_rootfs_fits(tree_usage_bytes(rootfs), layout)

    raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw.with_name(f".{raw.name}.partial")
    work = Path(tempfile.mkdtemp(prefix=".hubkiln-disk-", dir=raw.parent))
    try:
        install_boot_files(rootfs, label, quotas=quotas)
        core_path, efi_path = build_grub_images(rootfs, label, work, log)
        core = core_path.read_bytes()
        if len(core) > layout.bios.size_bytes:
            raise BuildError(
                f"GRUB core.img ({len(core)} bytes) does not fit the BIOS boot partition"
            )

        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            f.truncate(size_bytes)
        run(sgdisk_command(tmp, layout), log=log)
        check_partition_table(run(["sgdisk", "-p", str(tmp)], log=log), layout)

        run(
            mkfs_ext4_command(tmp, rootfs, layout, label),
            log=log,
            hint="if it ran out of space, raise base.disk_size",
        )

        esp = work / "esp.img"
        run(mkfs_vfat_command(esp, layout), log=log)
        mtools_env = {"MTOOLS_SKIP_CHECK": "1"}
        run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], log=log, env=mtools_env)
        run(["mcopy", "-i", str(esp), str(efi_path), "::/EFI/BOOT/BOOTX64.EFI"],
            log=log, env=mtools_env)  # fmt: skip
        _copy_file_at(esp, tmp, layout.esp.offset_bytes)

        _write_at(tmp, layout.bios.offset_bytes, patch_core_img(core, layout.bios.start))
        with open(tmp, "rb") as f:
            mbr = f.read(SECTOR)
        boot_img = (rootfs / "usr/lib/grub/i386-pc/boot.img").read_bytes()
        _write_at(tmp, 0, patch_boot_img(boot_img, mbr, layout.bios.start))

        # the MBR write must not have disturbed the table
        check_partition_table(run(["sgdisk", "-p", str(tmp)], log=log), layout)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.rename(raw)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


