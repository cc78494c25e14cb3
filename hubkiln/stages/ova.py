"""OVA: a streamOptimized VMDK and its OVF descriptor in one tar, for VMware and VirtualBox.

The OVF says the machine the profile needs (CPUs and memory from its limits, the
guest OS, one disk); the tar's manifest holds each member's SHA-256. After writing,
the archive is read back: members in order, the manifest's digests, the descriptor
parsed again, and the VMDK's virtual size.
"""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubkiln.config.profile import VmResources
from hubkiln.proc import run
from hubkiln.stages.artifacts import sha256_file
from hubkiln.stages.images import (
    VMDK_STREAM_FORMAT,
    check_vmdk,
    fail_checks,
    map_command,
    populated_bytes,
    sha256_member,
    vmdk_command,
)

#: CIM operating system ids (OVF OperatingSystemSection) and VMware guest ids.
OVF_OS = {"ubuntu-24.04": (94, "ubuntu64Guest", "Ubuntu 24.04 LTS (64-bit)"),
          "debian-12": (96, "debian10_64Guest", "Debian 12 (64-bit)")}


NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}


def ova_tar_command(folder: Path, dest: Path, names: list[str]) -> list[str]:
    """GNU tar argv packing an OVA: a ustar archive of `names` in the order given."""
    return ["tar", "--format=ustar", "--owner=0", "--group=0", "--numeric-owner",
            "-cf", str(dest), "-C", str(folder), *names]


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


def check_ova(path: Path, *, virtual_bytes: int, log: Path) -> None:
    """Parse the OVA's OVF and cross-check it with its VMDK and .mf (digests of every member)."""
    stem = path.name.removesuffix(".ova")
    wanted = {s: f"{stem}{s}" for s in (".ovf", ".mf", ".vmdk")}
    with tarfile.open(path, "r:") as archive:
        infos = archive.getmembers()
        members = [(m.name, sha256_member(archive, m)) for m in infos]
        by_name = {m.name: m for m in infos}
        absent = [n for n in wanted.values() if n not in by_name]
        if absent:
            fail_checks([f"{path.name}: has no {', '.join(absent)}"])

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
        fail_checks([*problems, f"{path.name}: the OVF does not parse: {exc}"])
        raise  # unreachable: fail_checks raised
    problems += check_ovf(summary, vmdk_name=vmdk.name, vmdk_bytes=vmdk.size,
                          capacity_bytes=virtual_bytes, name=path.name)
    fail_checks(problems)


def write_ova(source: Path, dest: Path, *, virtual_bytes: int, work: Path, log: Path, name: str,
              os_id: str, resources: VmResources,
              detail: Callable[[str], None] = lambda _: None) -> None:
    """The stream-optimized VMDK, its OVF and .mf, packed in that order as an OVA."""
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
