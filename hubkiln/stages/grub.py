"""GRUB for the assembled disk: BIOS (i386-pc core.img) and UEFI (BOOTX64.EFI) images.

Both are made with the tree's own grub-mkimage (run in a chroot, so its version
matches the modules copied to /boot/grub) and embed a config that finds the root
file system by label, then load the static /boot/grub/grub.cfg. That config boots
/boot/vmlinuz and /boot/initrd.img, the links the kernel packages keep current, so
kernel upgrades in the VM need no update-grub (if update-grub runs anyway it
rewrites grub.cfg with grub-mkconfig, fed by /etc/default/grub.d/hubkiln.cfg).
boot.img and core.img are patched here as grub-bios-setup would; disk.py writes them.

Limits: x86_64 only, BIOS (SeaBIOS) and UEFI without Secure Boot (GRUB is
unsigned); GRUB on disk is never updated from inside the VM (no grub-install there).
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import tempfile
from pathlib import Path

from hubkiln.errors import BuildError
from hubkiln.proc import run

SECTOR = 512
#: FAT labels are at most 11 characters.
ESP_LABEL = "HUBKILN-EFI"
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,16}\Z")

PC_MODULES = (
    "biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_label",
    "configfile", "normal", "echo", "test",
)  # fmt: skip


EFI_MODULES = (
    "part_gpt", "part_msdos", "ext2", "fat", "search", "search_label",
    "configfile", "normal", "echo", "test",
)  # fmt: skip


GRUB_PLATFORMS = ("i386-pc", "x86_64-efi")


# GRUB i386-pc boot.img fields (include/grub/i386/pc/boot.h)
BOOT_BPB_START = 0x03


BOOT_BPB_END = 0x5A


BOOT_KERNEL_SECTOR = 0x5C


BOOT_DRIVE = 0x64


BOOT_DRIVE_CHECK = 0x66


BOOT_NT_MAGIC = 0x1B8


BOOT_PART_END = 0x1FE


# diskboot.img (core.img's first sector) ends with a 12-byte blocklist entry:
# u64 start sector, u16 sector count, u16 load segment.
BLOCKLIST_SIZE = 12


BLOCKLIST_OFFSET = SECTOR - BLOCKLIST_SIZE


CORE_LOAD_SEGMENT = 0x800 + (SECTOR >> 4)


def grub_mkimage_command(
    platform: str, output: str, early_config: str, *, root: Path | None = None
) -> list[str]:
    """Return the grub-mkimage argv for `platform` (i386-pc or x86_64-efi).

    `output` and `early_config` are paths as the tree sees them when `root` is
    given: the command then runs grub-mkimage inside `root` with chroot.
    """
    if platform == "i386-pc":
        modules = PC_MODULES
    elif platform == "x86_64-efi":
        modules = EFI_MODULES
    else:
        raise ValueError(f"unsupported GRUB platform {platform!r}")
    cmd = [
        "grub-mkimage",
        "-O", platform,
        "-d", f"/usr/lib/grub/{platform}",
        "-o", output,
        "-c", early_config,
        "-p", "/boot/grub",
        *modules,
    ]  # fmt: skip
    return (["chroot", str(root)] if root else []) + cmd


def render_early_config(label: str) -> str:
    """Return the config embedded in both GRUB images: find the root fs, set the prefix.
    GRUB then loads normal.mod from the prefix, which reads $prefix/grub.cfg."""
    check_label(label)
    return (
        f"search --no-floppy --set=root --label {label}\n"
        "set prefix=($root)/boot/grub\n"
    )


def kernel_command_line(label: str) -> str:
    """Return the kernel arguments for a root filesystem labelled `label`."""
    check_label(label)
    return f"root=LABEL={label} ro console=tty1 console=ttyS0"


def render_grub_cfg(label: str) -> str:
    """Return the static /boot/grub/grub.cfg."""
    cmdline = kernel_command_line(label)
    return f"""\
# Written by hubkiln. Boots the kernel behind the /boot/vmlinuz and
# /boot/initrd.img links, which the kernel packages keep pointing at the
# newest kernel, so no update-grub is needed after a kernel upgrade.
# (update-grub, if run, replaces this file; see /etc/default/grub.d/hubkiln.cfg.)
set default=0
set timeout=1
if [ "$grub_platform" = "pc" ]; then
  serial --unit=0 --speed=115200
  terminal_input console serial
  terminal_output console serial
fi
if [ "$grub_platform" = "efi" ]; then
  insmod all_video
fi
search --no-floppy --set=root --label {label}

menuentry "Linux" {{
  linux /boot/vmlinuz {cmdline}
  initrd /boot/initrd.img
}}
menuentry "Linux (previous kernel)" {{
  linux /boot/vmlinuz.old {cmdline}
  initrd /boot/initrd.img.old
}}
"""


def render_grub_defaults() -> str:
    """Return /etc/default/grub.d/hubkiln.cfg: what grub-mkconfig should keep if an
    administrator runs update-grub in the VM."""
    return """\
# Written by hubkiln: keep the serial console if update-grub regenerates grub.cfg.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""


def render_fstab(label: str, *, quotas: bool = True) -> str:
    """Return /etc/fstab: root by label, the ESP at /boot/efi if present.

    `usrquota` (with `quotas`) marks the root file system for the quota tools:
    hubkiln-quota.service makes its quota file (aquota.user) and turns quotas on
    at boot; /home is part of it when there is no data disk. The option is a
    plain flag: mounting never needs the kernel's quota modules, only `quotaon`
    does, so a kernel without them still boots (with quotas off). Never the ext4
    `quota` feature: without the quota_v2 module such a file system cannot be
    mounted writable, and the machine would not boot.
    """
    check_label(label)
    return f"""\
# Written by hubkiln.
LABEL={label}\t/\text4\tdefaults,errors=remount-ro{",usrquota" if quotas else ""}\t0\t1
LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t0
"""


def patch_boot_img(boot_img: bytes, mbr: bytes, core_sector: int) -> bytes:
    """Return GRUB's boot.img made ready as the disk's MBR, as grub-bios-setup does:
    keep the existing MBR's BPB area, disk signature and partition table, point it
    at core.img's first sector and skip the boot-drive check (hard disk)."""
    if len(boot_img) != SECTOR or len(mbr) != SECTOR:
        raise BuildError("boot.img and the MBR must be exactly one sector")
    if boot_img[510:512] != b"\x55\xaa" or boot_img[BOOT_DRIVE_CHECK] != 0xEB:
        raise BuildError("boot.img does not look like GRUB's i386-pc boot.img")
    if mbr[510:512] != b"\x55\xaa":
        raise BuildError("the disk has no MBR signature: the partition table is missing")
    out = bytearray(boot_img)
    out[BOOT_BPB_START:BOOT_BPB_END] = mbr[BOOT_BPB_START:BOOT_BPB_END]
    out[BOOT_NT_MAGIC:BOOT_PART_END] = mbr[BOOT_NT_MAGIC:BOOT_PART_END]
    struct.pack_into("<Q", out, BOOT_KERNEL_SECTOR, core_sector)
    out[BOOT_DRIVE] = 0xFF  # use the drive the BIOS booted from
    out[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(out)


def patch_core_img(core_img: bytes, core_sector: int) -> bytes:
    """Return core.img (padded to whole sectors) whose first blocklist entry loads
    the rest of it from the sectors right after `core_sector`, its first sector."""
    sectors = math.ceil(len(core_img) / SECTOR)
    if sectors < 2:
        raise BuildError("core.img is too small to be a GRUB i386-pc core image")
    padded = core_img.ljust(sectors * SECTOR, b"\0")
    start, length, segment = struct.unpack_from("<QHH", padded, BLOCKLIST_OFFSET)
    if start != 2 or segment != CORE_LOAD_SEGMENT or length != sectors - 1:
        raise BuildError(
            "core.img's blocklist is not the one grub-mkimage writes "
            f"(start={start}, len={length}, segment={segment:#x}, sectors={sectors})"
        )
    terminator = padded[BLOCKLIST_OFFSET - BLOCKLIST_SIZE : BLOCKLIST_OFFSET]
    if terminator.strip(b"\0"):
        raise BuildError("core.img's blocklist has no terminating entry")
    out = bytearray(padded)
    struct.pack_into("<Q", out, BLOCKLIST_OFFSET, core_sector + 1)
    return bytes(out)


def install_boot_files(rootfs: Path, label: str, *, quotas: bool = True) -> None:
    """Write fstab, grub.cfg, GRUB's modules and grub defaults into the tree."""
    grub_dir = rootfs / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    for platform in GRUB_PLATFORMS:
        src = rootfs / "usr/lib/grub" / platform
        dest = grub_dir / platform
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir()
        for f in src.iterdir():
            if f.suffix in (".mod", ".lst"):
                shutil.copy2(f, dest / f.name)
    (grub_dir / "grub.cfg").write_text(render_grub_cfg(label))
    (rootfs / "etc/default/grub.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/default/grub.d/hubkiln.cfg").write_text(render_grub_defaults())
    (rootfs / "etc/fstab").write_text(render_fstab(label, quotas=quotas))
    (rootfs / "boot/efi").mkdir(exist_ok=True)


def build_grub_images(rootfs: Path, label: str, outdir: Path, log: Path) -> tuple[Path, Path]:
    """Run the tree's grub-mkimage; return (core.img, BOOTX64.EFI) copied into `outdir`."""
    for needed in ("usr/bin/grub-mkimage", "usr/lib/grub/i386-pc/boot.img",
                   "usr/lib/grub/x86_64-efi/kernel.img"):  # fmt: skip
        if not (rootfs / needed).exists():
            raise BuildError(
                f"the tree has no /{needed}",
                hint="bootstrap with grub-pc-bin, grub-efi-amd64-bin and grub2-common",
            )
    work = Path(tempfile.mkdtemp(prefix="hubkiln-grub-", dir=rootfs / "tmp"))
    inside = "/tmp/" + work.name
    try:
        (work / "early.cfg").write_text(render_early_config(label))
        for platform, name in (("i386-pc", "core.img"), ("x86_64-efi", "BOOTX64.EFI")):
            run(
                grub_mkimage_command(
                    platform, f"{inside}/{name}", f"{inside}/early.cfg", root=rootfs
                ),
                log=log,
            )
            shutil.copyfile(work / name, outdir / name)
    finally:
        shutil.rmtree(work)
    return outdir / "core.img", outdir / "BOOTX64.EFI"



def check_label(label: str) -> None:
    """Fail unless `label` is a usable ext4 label (<= 16 chars, no spaces or quotes)."""
    if not _LABEL.match(label):
        raise BuildError(
            f"invalid root filesystem label {label!r}",
            hint="use 1-16 characters from A-Z a-z 0-9 . _ -",
        )
