"""Image formats for clouds and hypervisors, converted from the baked qcow2 and each checked.

`write_format` turns the baked image into one artifact of `outputs.formats`
and checks it before it is listed; `check_artifact` runs the same check on a
finished file. Command lines, the OVF descriptor, the OVA manifest and every
parser are pure functions (tests/unit/test_formats.py).

- qcow2 `<stem>.qcow2` (zstd, 2 MiB clusters): `qemu-img check`, format, virtual size.
- raw `<stem>.raw` (sparse): format, virtual size, `qemu-img compare` with the source.
- vhd `<stem>.vhd` (fixed): format, virtual size a whole MiB, fixed-disk footer, compare.
- ova `<stem>.ova` (.ovf, .mf, stream-optimized .vmdk): the VMDK passes `qemu-img check`
  and is streamOptimized; the OVF parses and agrees with the VMDK; the .mf digests match.
- gce `<stem>.gce.tar.gz` (`disk.raw` in a sparse oldgnu tar): the tar listing holds one
  `disk.raw` of the virtual size, stored sparse.

Limits: the checks prove the files are well formed and hold the same disk;
they do not boot them on VMware, VirtualBox, Hyper-V or a cloud, which
cannot be done here. The OVF names an LSI Logic SCSI controller and an E1000
NIC (drivers every VMware and VirtualBox version has, and that the image's
`MODULES=most` initramfs carries); a hypervisor may still ask to map the
network at import. The raw and VHD files are as large as the virtual disk
(sparse on disk here, but full size once copied without `--sparse`).
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

from hubkiln.config.profile import VmResources
from hubkiln.proc import run
from hubkiln.stages.images import (
    GCE_DISK_NAME,
    aligned_size,
    check_command,
    check_gce_listing,
    check_info,
    check_vhd,
    compare_command,
    convert_image,
    fail_checks,
    gce_tar_command,
    parse_tar_listing,
    parse_vhd_footer,
    raw_command,
    read_info,
    tar_list_command,
    vhd_commands,
)
from hubkiln.stages.ova import check_ova, write_ova

#: What each format is for (the manifest and docs/publish.md use the same words).
FORMATS: dict[str, str] = {
    "qcow2": "KVM, Proxmox, OpenStack",
    "raw": "AWS import-image",
    "vhd": "Azure, Hyper-V",
    "ova": "VMware, VirtualBox",
    "gce": "Google Cloud",
}
#: File name suffix of each format's artifact.
SUFFIXES: dict[str, str] = {
    "qcow2": ".qcow2", "raw": ".raw", "vhd": ".vhd", "ova": ".ova", "gce": ".gce.tar.gz",
}


def ordered_formats(wanted: list[str]) -> list[str]:
    """qcow2 first (validation, launch and publish boot it, so it is always written), then the
    profile's other formats in the profile's order."""
    return ["qcow2"] + [f for f in wanted if f != "qcow2"]


def artifact_name(stem: str, fmt: str) -> str:
    """`hubkiln-ci-2026-fall` + `gce` → `hubkiln-ci-2026-fall.gce.tar.gz`."""
    return stem + SUFFIXES[fmt]


# --- command lines (pure) ---------------------------------------------------------


# --- parsers and checks (pure) ------------------------------------------------------


# --- side effects -------------------------------------------------------------------


def check_artifact(fmt: str, path: Path, *, virtual_bytes: int, log: Path,
                   source: tuple[Path, str] | None = None) -> None:
    """Check a finished artifact of `fmt`; with `source` (path, format), also that it holds
    the same disk. Raise BuildError listing every problem."""
    name = path.name
    if fmt == "qcow2":
        run(check_command(path, "qcow2"), log=log, hint="the image is corrupt: rebuild it")
        fail_checks(check_info(read_info(path, "qcow2", log), fmt="qcow2",
                               virtual_bytes=virtual_bytes, name=name))
    elif fmt in ("raw", "vhd"):
        qemu_fmt = "vpc" if fmt == "vhd" else "raw"
        want = aligned_size(virtual_bytes) if fmt == "vhd" else virtual_bytes
        problems = check_info(read_info(path, qemu_fmt, log), fmt=qemu_fmt, virtual_bytes=want,
                              name=name)
        if fmt == "vhd":
            with open(path, "rb") as f:
                f.seek(-512, 2)
                problems += check_vhd(parse_vhd_footer(f.read(512)), path.stat().st_size,
                                      virtual_bytes=want, name=name)
        fail_checks(problems)
        if source:
            run(compare_command(source[0], source[1], path, qemu_fmt), log=log,
                hint=f"{name} does not hold the same disk as the baked image")
    elif fmt == "gce":
        fail_checks(check_gce_listing(parse_tar_listing(run(tar_list_command(path), log=log)),
                                virtual_bytes=virtual_bytes, name=name))
        with gzip.open(path) as f:
            header = f.read(512)
        if header[156:157] != b"S":
            fail_checks([f"{name}: {GCE_DISK_NAME} is not stored as a GNU sparse file"])
    elif fmt == "ova":
        check_ova(path, virtual_bytes=virtual_bytes, log=log)
    else:
        raise ValueError(f"unknown format {fmt}")


def write_format(fmt: str, source: Path, dest: Path, *, virtual_bytes: int, work: Path,
                 log: Path, name: str, os_id: str, resources: VmResources,
                 detail: Callable[[str], None] = lambda _: None) -> Path:
    """Write the `fmt` artifact of the qcow2 `source` as `dest` and check it.

    `work` holds intermediate files (removed afterwards); `dest` must be in a
    staging folder: it is complete and checked when this returns.
    """
    work.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "qcow2":
            detail("qcow2: compressing")
            convert_image(source, dest, fmt="qcow2", compress=True, src_fmt="qcow2", log=log)
        elif fmt == "raw":
            detail("raw: converting")
            run(raw_command(source, dest), log=log)
        elif fmt == "vhd":
            detail("vhd: converting to a fixed VHD")
            for cmd in vhd_commands(source, dest, virtual_bytes, work / "aligned.qcow2"):
                run(cmd, log=log)
        elif fmt == "gce":
            detail("gce: converting to disk.raw")
            run(raw_command(source, work / GCE_DISK_NAME), log=log)
            detail("gce: packing disk.raw into a sparse tar.gz")
            run(gce_tar_command(work, dest), log=log)
        elif fmt == "ova":
            write_ova(source, dest, virtual_bytes=virtual_bytes, work=work, log=log, name=name,
                      os_id=os_id, resources=resources, detail=detail)
        else:
            raise ValueError(f"unknown format {fmt}")
        detail(f"{fmt}: checking {dest.name}")
        check_artifact(fmt, dest, virtual_bytes=virtual_bytes, log=log,
                       source=(source, "qcow2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


