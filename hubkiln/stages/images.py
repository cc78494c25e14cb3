"""Disk image files: qemu-img's command lines, conversions, and the checks of each written file.

Every format is written from the baked qcow2 and then read back before it counts:
qemu-img info (format, virtual size), qemu-img check, qemu-img compare against the
source, the allocation map; a VHD's fixed footer, and a GCE tar's listing. Pure
functions build the command lines and judge their output; the few that run them
go through proc.run, so their output lands in the outputs log.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hubkiln.errors import BuildError, PreflightError
from hubkiln.proc import run

MIB = 1 << 20


#: The name Google Cloud requires for the disk inside the tar.
GCE_DISK_NAME = "disk.raw"


VMDK_STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def aligned_size(size: int, unit: int = MIB) -> int:
    """`size` rounded up to a whole number of `unit`."""
    return -(-size // unit) * unit


def raw_command(src: Path, dest: Path, src_fmt: str = "qcow2") -> list[str]:
    """qemu-img argv writing a sparse raw copy of `src`."""
    return ["qemu-img", "convert", "-f", src_fmt, "-O", "raw", str(src), str(dest)]


def vmdk_command(src: Path, dest: Path, src_fmt: str = "qcow2") -> list[str]:
    """qemu-img argv writing a stream-optimized VMDK (the only kind an OVA may carry)."""
    return ["qemu-img", "convert", "-f", src_fmt, "-O", "vmdk",
            "-o", "subformat=streamOptimized,adapter_type=lsilogic", str(src), str(dest)]


def vhd_commands(src: Path, dest: Path, virtual_bytes: int, overlay: Path,
                 src_fmt: str = "qcow2") -> list[list[str]]:
    """qemu-img argvs writing a fixed VHD whose virtual size is a whole MiB.

    `force_size` keeps qemu from rounding the size to a CHS geometry. When the
    disk is not a whole MiB, a qcow2 overlay of the aligned size (the tail
    reads as zeros) is converted instead, so the source is never changed.
    """
    size = aligned_size(virtual_bytes)
    if size == virtual_bytes:
        steps, fmt, image = [], src_fmt, src
    else:
        steps = [["qemu-img", "create", "-q", "-f", "qcow2", "-F", src_fmt, "-b",
                  str(src.resolve()), str(overlay), str(size)]]
        fmt, image = "qcow2", overlay
    return [*steps, ["qemu-img", "convert", "-f", fmt, "-O", "vpc", "-o",
                     "subformat=fixed,force_size=on", str(image), str(dest)]]


def gce_tar_command(folder: Path, dest: Path) -> list[str]:
    """GNU tar argv packing `folder/disk.raw` as Google Cloud requires: oldgnu format, sparse,
    gzip. Level 1 packs the ci disk in a third of the default's time for 11% more bytes."""
    return ["tar", "--format=oldgnu", "--sparse", "--owner=0", "--group=0", "--numeric-owner",
            "--use-compress-program=gzip -1", "-cf", str(dest), "-C", str(folder), GCE_DISK_NAME]


def info_command(image: Path, fmt: str) -> list[str]:
    return ["qemu-img", "info", "-f", fmt, "--output=json", str(image)]


def check_command(image: Path, fmt: str) -> list[str]:
    return ["qemu-img", "check", "-f", fmt, str(image)]


def compare_command(src: Path, src_fmt: str, image: Path, fmt: str) -> list[str]:
    """qemu-img argv that fails unless both images hold the same guest-visible bytes."""
    return ["qemu-img", "compare", "-f", src_fmt, "-F", fmt, str(src), str(image)]


def map_command(image: Path, fmt: str) -> list[str]:
    return ["qemu-img", "map", "-f", fmt, "--output=json", str(image)]


def tar_list_command(archive: Path) -> list[str]:
    return ["tar", "--list", "--verbose", "--gzip", "--file", str(archive)]


def check_info(info: dict[str, Any], *, fmt: str, virtual_bytes: int, name: str) -> list[str]:
    """Problems with a `qemu-img info` record: wrong format or virtual size."""
    problems = []
    if info.get("format") != fmt:
        problems.append(f"{name}: qemu-img reads it as {info.get('format')!r}, expected {fmt!r}")
    if info.get("virtual-size") != virtual_bytes:
        problems.append(f"{name}: virtual size {info.get('virtual-size')} bytes, expected "
                        f"{virtual_bytes}")
    return problems


def populated_bytes(map_entries: list[dict[str, Any]]) -> int:
    """Bytes of the disk that hold data, from `qemu-img map --output=json`."""
    return sum(e["length"] for e in map_entries if e.get("data") and not e.get("zero"))


VHD_FIXED = 2


def parse_vhd_footer(footer: bytes) -> dict[str, Any]:
    """The fields of a VHD footer (its last 512 bytes) that the checks use."""
    if len(footer) != 512:
        raise ValueError("a VHD footer is 512 bytes")
    original, current = struct.unpack(">QQ", footer[40:56])
    (disk_type,) = struct.unpack(">I", footer[60:64])
    return {"cookie": footer[:8], "original_size": original, "current_size": current,
            "disk_type": disk_type}


def check_vhd(footer: dict[str, Any], file_bytes: int, *, virtual_bytes: int,
              name: str) -> list[str]:
    """Problems for Azure: not a fixed VHD, size not a whole MiB, or data and footer disagree."""
    problems = []
    if footer["cookie"] != b"conectix":
        problems.append(f"{name}: no VHD footer (cookie {footer['cookie']!r})")
    if footer["disk_type"] != VHD_FIXED:
        problems.append(f"{name}: disk type {footer['disk_type']}, expected 2 (fixed)")
    if footer["current_size"] != virtual_bytes:
        problems.append(f"{name}: footer size {footer['current_size']}, expected {virtual_bytes}")
    if virtual_bytes % MIB:
        problems.append(f"{name}: virtual size {virtual_bytes} is not a whole MiB")
    if file_bytes != virtual_bytes + 512:
        problems.append(f"{name}: file is {file_bytes} bytes, a fixed VHD is the disk + 512")
    return problems


_TAR_ROW = re.compile(r"^(?P<mode>\S+)\s+\S+\s+(?P<size>\d+)\s+\S+\s+\S+\s+(?P<name>.+)$")


def parse_tar_listing(text: str) -> list[tuple[str, int]]:
    """(name, bytes) of each entry of `tar --list --verbose`."""
    rows = []
    for line in text.splitlines():
        match = _TAR_ROW.match(line.strip())
        if match:
            rows.append((match["name"], int(match["size"])))
    return rows


def check_gce_listing(entries: list[tuple[str, int]], *, virtual_bytes: int,
                      name: str) -> list[str]:
    """Problems for Google Cloud: the tar must hold exactly `disk.raw` of the disk's size."""
    if [n for n, _ in entries] != [GCE_DISK_NAME]:
        return [f"{name}: holds {[n for n, _ in entries]}, expected only {GCE_DISK_NAME}"]
    if entries[0][1] != virtual_bytes:
        return [f"{name}: {GCE_DISK_NAME} is {entries[0][1]} bytes, expected {virtual_bytes}"]
    return []


def fail_checks(problems: list[str]) -> None:
    if problems:
        raise BuildError("format check failed:\n  " + "\n  ".join(problems),
                         hint="this is a hubkiln or qemu-img bug: report it with "
                         "output/<profile>/logs/outputs.log")


def read_info(image: Path, fmt: str, log: Path) -> dict[str, Any]:
    return json.loads(run(info_command(image, fmt), log=log))


def sha256_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    stream = archive.extractfile(member)
    assert stream is not None
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def check_vmdk(vmdk: Path, *, virtual_bytes: int, log: Path) -> None:
    """`qemu-img check` of the VMDK, which must be stream-optimized and of the disk's size."""
    run(check_command(vmdk, "vmdk"), log=log, hint="qemu-img wrote a corrupt VMDK")
    info = read_info(vmdk, "vmdk", log)
    problems = check_info(info, fmt="vmdk", virtual_bytes=virtual_bytes, name=vmdk.name)
    create_type = info.get("format-specific", {}).get("data", {}).get("create-type")
    if create_type != "streamOptimized":
        problems.append(f"{vmdk.name}: create type {create_type!r}, expected streamOptimized")
    fail_checks(problems)


def qemu_img_convert_command(
    raw: Path, out: Path, *, fmt: str = "qcow2", compress: bool = False, zstd: bool = False,
    src_fmt: str = "raw",
) -> list[str]:
    """Return the qemu-img argv converting `raw` (a `src_fmt` image) to `fmt` (zstd only for
    compressed qcow2)."""
    cmd = ["qemu-img", "convert", "-f", src_fmt, "-O", fmt]
    if compress:
        cmd.append("-c")
        if fmt == "qcow2":
            # Clusters are compressed one by one: 2 MiB clusters compress ~10% better
            # than the default 64 KiB (measured: 617 MB against 689 MB).
            options = ["cluster_size=2M"] + (["compression_type=zstd"] if zstd else [])
            cmd += ["-o", ",".join(options)]
    return [*cmd, str(raw), str(out)]


def qemu_img_supports_zstd() -> bool:
    """Return True if this qemu-img can write zstd-compressed qcow2 clusters."""
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd",
             f"{d}/probe.qcow2", "1M"],
            capture_output=True,
        )  # fmt: skip
    return probe.returncode == 0


def convert_image(
    raw: Path, out: Path, *, fmt: str = "qcow2", compress: bool = False, log: Path,
    src_fmt: str = "raw",
) -> None:
    """Convert the disk `raw` (a `src_fmt` image) to `out` in format `fmt` (qcow2: zstd when
    compressing and supported). Writes a temporary file next to `out` and renames it."""
    if shutil.which("qemu-img") is None:
        raise PreflightError("qemu-img is not installed", hint="apt-get install qemu-utils")
    zstd = compress and fmt == "qcow2" and qemu_img_supports_zstd()
    tmp = out.with_name(f".{out.name}.partial")
    try:
        run(qemu_img_convert_command(raw, tmp, fmt=fmt, compress=compress, zstd=zstd,
                                     src_fmt=src_fmt), log=log)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
