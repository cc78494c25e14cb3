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
import hashlib
import json
import math
import re
import shutil
import struct
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln.errors import BuildError
from hubkiln.proc import run

MIB = 1 << 20

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
#: The name Google Cloud requires for the disk inside the tar.
GCE_DISK_NAME = "disk.raw"
VMDK_STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
#: Memory left for the OS, the hub and its proxy besides one student's server.
HUB_OVERHEAD_MIB = 1024
MIN_MEMORY_MIB = 2048
MIN_CPUS = 2

#: CIM operating system ids (OVF OperatingSystemSection) and VMware guest ids.
OVF_OS = {"ubuntu-24.04": (94, "ubuntu64Guest", "Ubuntu 24.04 LTS (64-bit)"),
          "debian-12": (96, "debian10_64Guest", "Debian 12 (64-bit)")}

NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}


def ordered_formats(wanted: list[str]) -> list[str]:
    """qcow2 first (validation, launch and publish boot it, so it is always written), then the
    profile's other formats in the profile's order."""
    return ["qcow2"] + [f for f in wanted if f != "qcow2"]


def artifact_name(stem: str, fmt: str) -> str:
    """`hubkiln-ci-2026-fall` + `gce` → `hubkiln-ci-2026-fall.gce.tar.gz`."""
    return stem + SUFFIXES[fmt]


def aligned_size(size: int, unit: int = MIB) -> int:
    """`size` rounded up to a whole number of `unit`."""
    return -(-size // unit) * unit


@dataclass(frozen=True)
class VmResources:
    """CPUs and memory of a VM made from the image (OVF, libvirt domain)."""

    cpus: int
    memory_mib: int


def vm_resources(limits: dict[str, Any]) -> VmResources:
    """A VM that runs the hub and one student's server at the profile's `hub.limits`:
    the student's memory plus HUB_OVERHEAD_MIB (at least 2 GiB), their CPUs (at least 2).
    Size a class's VM at launch; this is a starting point, not a capacity plan."""
    from hubkiln.config.profile import parse_size

    student = parse_size(limits["memory"]) // MIB
    return VmResources(cpus=max(MIN_CPUS, math.ceil(limits["cpu"])),
                       memory_mib=max(MIN_MEMORY_MIB, student + HUB_OVERHEAD_MIB))


# --- command lines (pure) ---------------------------------------------------------


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


def ova_tar_command(folder: Path, dest: Path, names: list[str]) -> list[str]:
    """GNU tar argv packing an OVA: a ustar archive of `names` in the order given."""
    return ["tar", "--format=ustar", "--owner=0", "--group=0", "--numeric-owner",
            "-cf", str(dest), "-C", str(folder), *names]


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


# --- parsers and checks (pure) ------------------------------------------------------


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


def _rasd_item(values: dict[str, str]) -> ET.Element:
    """An OVF hardware Item; CIM's schema wants its rasd elements in alphabetical order."""
    item = ET.Element(f"{{{NS['ovf']}}}Item")
    for key in sorted(values):
        ET.SubElement(item, f"{{{NS['rasd']}}}{key}").text = values[key]
    return item


def render_ovf(*, name: str, os_id: str, vmdk_name: str, vmdk_bytes: int, capacity_bytes: int,
               populated: int, resources: VmResources) -> str:
    """The OVF 1.0 descriptor of a one-disk VM: CPUs, memory, SCSI disk, one E1000 NIC."""
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)  # ElementTree cannot qualify attributes otherwise
    o = f"{{{NS['ovf']}}}"
    cim_id, vmw_type, os_text = OVF_OS[os_id]
    env = ET.Element(f"{o}Envelope", {f"{o}version": "1.0",
                                      "{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    refs = ET.SubElement(env, f"{o}References")
    ET.SubElement(refs, f"{o}File", {f"{o}href": vmdk_name, f"{o}id": "file1",
                                     f"{o}size": str(vmdk_bytes)})
    disks = ET.SubElement(env, f"{o}DiskSection")
    ET.SubElement(disks, f"{o}Info").text = "Virtual disk information"
    ET.SubElement(disks, f"{o}Disk", {
        f"{o}capacity": str(capacity_bytes), f"{o}capacityAllocationUnits": "byte",
        f"{o}diskId": "vmdisk1", f"{o}fileRef": "file1", f"{o}format": VMDK_STREAM_FORMAT,
        f"{o}populatedSize": str(populated)})
    nets = ET.SubElement(env, f"{o}NetworkSection")
    ET.SubElement(nets, f"{o}Info").text = "The logical network of the VM's adapter"
    net = ET.SubElement(nets, f"{o}Network", {f"{o}name": "NAT"})
    ET.SubElement(net, f"{o}Description").text = "Outbound network with NAT"
    system = ET.SubElement(env, f"{o}VirtualSystem", {f"{o}id": name})
    ET.SubElement(system, f"{o}Info").text = "A hubkiln JupyterHub server"
    ET.SubElement(system, f"{o}Name").text = name
    oss = ET.SubElement(system, f"{o}OperatingSystemSection",
                        {f"{o}id": str(cim_id), f"{{{NS['vmw']}}}osType": vmw_type})
    ET.SubElement(oss, f"{o}Info").text = "The guest operating system"
    ET.SubElement(oss, f"{o}Description").text = os_text
    hw = ET.SubElement(system, f"{o}VirtualHardwareSection")
    ET.SubElement(hw, f"{o}Info").text = "Virtual hardware requirements"
    sys_el = ET.SubElement(hw, f"{o}System")
    for key, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                       ("VirtualSystemIdentifier", name), ("VirtualSystemType", "vmx-13")):
        ET.SubElement(sys_el, f"{{{NS['vssd']}}}{key}").text = value
    hw.append(_rasd_item({"AllocationUnits": "hertz * 10^6", "ElementName": "CPUs",
                          "InstanceID": "1", "ResourceType": "3",
                          "VirtualQuantity": str(resources.cpus)}))
    hw.append(_rasd_item({"AllocationUnits": "byte * 2^20", "ElementName": "Memory",
                          "InstanceID": "2", "ResourceType": "4",
                          "VirtualQuantity": str(resources.memory_mib)}))
    hw.append(_rasd_item({"Address": "0", "ElementName": "SCSI controller 0", "InstanceID": "3",
                          "ResourceSubType": "lsilogic", "ResourceType": "6"}))
    hw.append(_rasd_item({"AddressOnParent": "0", "ElementName": "Hard disk 1",
                          "HostResource": "ovf:/disk/vmdisk1", "InstanceID": "4",
                          "Parent": "3", "ResourceType": "17"}))
    hw.append(_rasd_item({"AutomaticAllocation": "true", "Connection": "NAT",
                          "ElementName": "Network adapter 1", "InstanceID": "5",
                          "ResourceSubType": "E1000", "ResourceType": "10"}))
    ET.indent(env)
    return ET.tostring(env, encoding="unicode", xml_declaration=True) + "\n"


@dataclass(frozen=True)
class OvfSummary:
    """What the checks read back from an OVF descriptor."""

    files: dict[str, int]  # href → size
    capacity_bytes: int
    populated_bytes: int
    disk_format: str
    cpus: int
    memory_mib: int
    nics: int
    disk_attached: bool


_UNITS = {"byte": 1, "byte * 2^10": 1 << 10, "byte * 2^20": 1 << 20, "byte * 2^30": 1 << 30}


def parse_ovf(text: str) -> OvfSummary:
    """Read an OVF descriptor back (raises ValueError / ParseError if it is not one)."""
    root = ET.fromstring(text)
    o, r = f"{{{NS['ovf']}}}", f"{{{NS['rasd']}}}"
    if root.tag != f"{o}Envelope":
        raise ValueError(f"root element is {root.tag}, not an OVF Envelope")
    files = {f.get(f"{o}href", ""): int(f.get(f"{o}size", "-1"))
             for f in root.iterfind("ovf:References/ovf:File", NS)}
    disk = root.find("ovf:DiskSection/ovf:Disk", NS)
    if disk is None:
        raise ValueError("the OVF has no DiskSection/Disk")
    unit = _UNITS[disk.get(f"{o}capacityAllocationUnits", "byte")]
    items = [{child.tag.removeprefix(r): (child.text or "") for child in item}
             for item in root.iterfind(".//ovf:VirtualHardwareSection/ovf:Item", NS)]

    def quantity(resource_type: str) -> int:
        found = [i for i in items if i.get("ResourceType") == resource_type]
        return int(found[0]["VirtualQuantity"]) if found else 0

    disk_id = disk.get(f"{o}diskId")
    return OvfSummary(
        files=files,
        capacity_bytes=int(disk.get(f"{o}capacity", "0")) * unit,
        populated_bytes=int(disk.get(f"{o}populatedSize", "0")),
        disk_format=disk.get(f"{o}format", ""),
        cpus=quantity("3"),
        memory_mib=quantity("4"),
        nics=len([i for i in items if i.get("ResourceType") == "10"]),
        disk_attached=any(i.get("HostResource") == f"ovf:/disk/{disk_id}" for i in items),
    )


def check_ovf(summary: OvfSummary, *, vmdk_name: str, vmdk_bytes: int,
              capacity_bytes: int, name: str) -> list[str]:
    """Problems between an OVF and the VMDK it ships with."""
    problems = []
    if summary.files != {vmdk_name: vmdk_bytes}:
        problems.append(f"{name}: OVF references {summary.files}, the OVA holds "
                        f"{vmdk_name} of {vmdk_bytes} bytes")
    if summary.capacity_bytes != capacity_bytes:
        problems.append(f"{name}: OVF capacity {summary.capacity_bytes}, VMDK virtual size "
                        f"{capacity_bytes}")
    if not 0 < summary.populated_bytes <= capacity_bytes:
        problems.append(f"{name}: OVF populated size {summary.populated_bytes} is not in "
                        f"(0, {capacity_bytes}]")
    if summary.disk_format != VMDK_STREAM_FORMAT:
        problems.append(f"{name}: OVF disk format {summary.disk_format!r} is not streamOptimized")
    if summary.cpus < 1 or summary.memory_mib < 1:
        problems.append(f"{name}: OVF gives {summary.cpus} CPUs and {summary.memory_mib} MiB")
    if summary.nics < 1:
        problems.append(f"{name}: OVF has no network adapter")
    if not summary.disk_attached:
        problems.append(f"{name}: OVF does not attach its disk to a controller")
    return problems


def render_ova_manifest(digests: dict[str, str]) -> str:
    """The OVA's .mf: `SHA256(name)= digest` per file, in the order given."""
    return "".join(f"SHA256({n})= {d}\n" for n, d in digests.items())


def parse_ova_manifest(text: str) -> dict[str, str]:
    return dict(re.findall(r"^SHA256\((.+)\)= ([0-9a-f]{64})$", text, flags=re.M))


def check_ova_members(members: list[tuple[str, str]], manifest: dict[str, str], *,
                      stem: str, name: str) -> list[str]:
    """Problems with an OVA's members (name, sha256) in archive order: .ovf first, then .mf,
    then the .vmdk (DSP0243: the manifest immediately follows the descriptor); the .mf must
    list every other member with its digest."""
    problems = []
    names = [n for n, _ in members]
    expected = [f"{stem}.ovf", f"{stem}.mf", f"{stem}.vmdk"]
    if names != expected:
        problems.append(f"{name}: members {names}, expected {expected}")
    listed = {n: d for n, d in members if not n.endswith(".mf")}
    if manifest != listed:
        problems.append(f"{name}: the .mf lists {manifest}, the members are {listed}")
    return problems


# --- side effects -------------------------------------------------------------------


def _fail(problems: list[str]) -> None:
    if problems:
        raise BuildError("format check failed:\n  " + "\n  ".join(problems),
                         hint="this is a hubkiln or qemu-img bug: report it with "
                         "output/<profile>/logs/outputs.log")


def _info(image: Path, fmt: str, log: Path) -> dict[str, Any]:
    return json.loads(run(info_command(image, fmt), log=log))


def _sha256_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    stream = archive.extractfile(member)
    assert stream is not None
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def check_artifact(fmt: str, path: Path, *, virtual_bytes: int, log: Path,
                   source: tuple[Path, str] | None = None) -> None:
    """Check a finished artifact of `fmt`; with `source` (path, format), also that it holds
    the same disk. Raise BuildError listing every problem."""
    name = path.name
    if fmt == "qcow2":
        run(check_command(path, "qcow2"), log=log, hint="the image is corrupt: rebuild it")
        _fail(check_info(_info(path, "qcow2", log), fmt="qcow2", virtual_bytes=virtual_bytes,
                         name=name))
    elif fmt in ("raw", "vhd"):
        qemu_fmt = "vpc" if fmt == "vhd" else "raw"
        want = aligned_size(virtual_bytes) if fmt == "vhd" else virtual_bytes
        problems = check_info(_info(path, qemu_fmt, log), fmt=qemu_fmt, virtual_bytes=want,
                              name=name)
        if fmt == "vhd":
            with open(path, "rb") as f:
                f.seek(-512, 2)
                problems += check_vhd(parse_vhd_footer(f.read(512)), path.stat().st_size,
                                      virtual_bytes=want, name=name)
        _fail(problems)
        if source:
            run(compare_command(source[0], source[1], path, qemu_fmt), log=log,
                hint=f"{name} does not hold the same disk as the baked image")
    elif fmt == "gce":
        _fail(check_gce_listing(parse_tar_listing(run(tar_list_command(path), log=log)),
                                virtual_bytes=virtual_bytes, name=name))
        with gzip.open(path) as f:
            header = f.read(512)
        if header[156:157] != b"S":
            _fail([f"{name}: {GCE_DISK_NAME} is not stored as a GNU sparse file"])
    elif fmt == "ova":
        check_ova(path, virtual_bytes=virtual_bytes, log=log)
    else:
        raise ValueError(f"unknown format {fmt}")


def check_ova(path: Path, *, virtual_bytes: int, log: Path) -> None:
    """Parse the OVA's OVF and cross-check it with its VMDK and .mf (digests of every member)."""
    stem = path.name.removesuffix(".ova")
    wanted = {s: f"{stem}{s}" for s in (".ovf", ".mf", ".vmdk")}
    with tarfile.open(path, "r:") as archive:
        infos = archive.getmembers()
        members = [(m.name, _sha256_member(archive, m)) for m in infos]
        by_name = {m.name: m for m in infos}
        absent = [n for n in wanted.values() if n not in by_name]
        if absent:
            _fail([f"{path.name}: has no {', '.join(absent)}"])

        def text(suffix: str) -> str:
            stream = archive.extractfile(by_name[wanted[suffix]])
            assert stream is not None
            return stream.read().decode("utf-8")

        ovf_text, mf_text = text(".ovf"), text(".mf")
    vmdk = by_name[wanted[".vmdk"]]
    problems = check_ova_members(members, parse_ova_manifest(mf_text), stem=stem,
                                 name=path.name)
    try:
        summary = parse_ovf(ovf_text)
    except (ET.ParseError, ValueError, KeyError) as exc:
        _fail([*problems, f"{path.name}: the OVF does not parse: {exc}"])
        raise  # unreachable: _fail raised
    problems += check_ovf(summary, vmdk_name=vmdk.name, vmdk_bytes=vmdk.size,
                          capacity_bytes=virtual_bytes, name=path.name)
    _fail(problems)


def check_vmdk(vmdk: Path, *, virtual_bytes: int, log: Path) -> None:
    """`qemu-img check` of the VMDK, which must be stream-optimized and of the disk's size."""
    run(check_command(vmdk, "vmdk"), log=log, hint="qemu-img wrote a corrupt VMDK")
    info = _info(vmdk, "vmdk", log)
    problems = check_info(info, fmt="vmdk", virtual_bytes=virtual_bytes, name=vmdk.name)
    create_type = info.get("format-specific", {}).get("data", {}).get("create-type")
    if create_type != "streamOptimized":
        problems.append(f"{vmdk.name}: create type {create_type!r}, expected streamOptimized")
    _fail(problems)


def write_format(fmt: str, source: Path, dest: Path, *, virtual_bytes: int, work: Path,
                 log: Path, name: str, os_id: str, resources: VmResources,
                 detail: Callable[[str], None] = lambda _: None) -> Path:
    """Write the `fmt` artifact of the qcow2 `source` as `dest` and check it.

    `work` holds intermediate files (removed afterwards); `dest` must be in a
    staging folder: it is complete and checked when this returns.
    """
    from hubkiln.stages.disk import convert_image

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


def write_ova(source: Path, dest: Path, *, virtual_bytes: int, work: Path, log: Path, name: str,
              os_id: str, resources: VmResources,
              detail: Callable[[str], None] = lambda _: None) -> None:
    """The stream-optimized VMDK, its OVF and .mf, packed in that order as an OVA."""
    from hubkiln.stages.artifacts import sha256_file

    stem = dest.name.removesuffix(".ova")
    vmdk, ovf, mf = (work / f"{stem}{s}" for s in (".vmdk", ".ovf", ".mf"))
    detail("ova: converting to a stream-optimized VMDK")
    run(vmdk_command(source, vmdk), log=log)
    check_vmdk(vmdk, virtual_bytes=virtual_bytes, log=log)
    used = populated_bytes(json.loads(run(map_command(source, "qcow2"), log=log)))
    ovf.write_text(render_ovf(name=name, os_id=os_id, vmdk_name=vmdk.name,
                              vmdk_bytes=vmdk.stat().st_size, capacity_bytes=virtual_bytes,
                              populated=used, resources=resources), encoding="utf-8")
    parse_ovf(ovf.read_text(encoding="utf-8"))
    mf.write_text(render_ova_manifest({ovf.name: sha256_file(ovf),
                                       vmdk.name: sha256_file(vmdk)}), encoding="utf-8")
    detail("ova: packing .ovf, .mf and .vmdk")
    run(ova_tar_command(work, dest, [ovf.name, mf.name, vmdk.name]), log=log)
