"""Publish into a local libvirt: import the qcow2 into a storage pool and define a domain.

The domain XML gives the profile's CPUs and memory, BIOS or UEFI firmware, the
host's accelerator (KVM, else TCG with a CPU model that runs the image), a serial
console logged under /var/log/libvirt/qemu, and the network asked for (the
`default` network when it is active, else user-mode networking). Everything it
did is printed with the commands that undo it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln.config.profile import VmResources
from hubkiln.deliver.artifact import Artifact, PublishError
from hubkiln.errors import HubkilnError, PreflightError
from hubkiln.machine.accel import choose_accelerator
from hubkiln.machine.vm import TCG_CPU_MODEL
from hubkiln.preflight import check_requirements
from hubkiln.proc import run

LIBVIRT_URI = "qemu:///system"


DEFAULT_POOL_DIR = Path("/var/lib/libvirt/images")


SERIAL_LOG_DIR = Path("/var/log/libvirt/qemu")


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")


OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


FIRMWARES = ("bios", "uefi")


def domain_type(accelerator: str) -> str:
    """libvirt's domain type for hubkiln's accelerator: `kvm` for kvm, `qemu` (TCG) otherwise."""
    return "kvm" if accelerator == "kvm" else "qemu"


def choose_network(requested: str | None, active: list[str]) -> str | None:
    """The libvirt network to attach: `requested` if given, else `default` when it is active,
    else None (user-mode networking, which needs no bridge)."""
    if requested:
        return requested
    return "default" if "default" in active else None


def parse_name_list(text: str) -> list[str]:
    """Names from `virsh ...-list --name` output."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def render_domain_xml(*, name: str, pool: str, volume: str, resources: VmResources,
                      dom_type: str, firmware: str, network: str | None, serial_log: Path,
                      description: str = "") -> str:
    """The libvirt domain of an imported image: q35, virtio disk and NIC, serial console."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {FIRMWARES}")
    dom = ET.Element("domain", {"type": dom_type})
    ET.SubElement(dom, "name").text = name
    if description:
        ET.SubElement(dom, "description").text = description
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(resources.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(resources.cpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "q35"}).text = "hvm"
    if firmware == "uefi":
        # Plain OVMF, no Secure Boot: the image's GRUB is not signed.
        ET.SubElement(os_el, "loader", {"readonly": "yes", "type": "pflash"}).text = str(OVMF_CODE)
        ET.SubElement(os_el, "nvram", {"template": str(OVMF_VARS)})
    ET.SubElement(os_el, "boot", {"dev": "hd"})
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    # Never libvirt's default model for TCG (qemu64): NumPy 2 needs SSE4.2 and POPCNT.
    if dom_type == "kvm":
        ET.SubElement(dom, "cpu", {"mode": "host-passthrough"})
    else:
        cpu = ET.SubElement(dom, "cpu", {"mode": "custom", "match": "exact"})
        ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = TCG_CPU_MODEL
    ET.SubElement(dom, "clock", {"offset": "utc"})
    devices = ET.SubElement(dom, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "volume", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2", "discard": "unmap"})
    ET.SubElement(disk, "source", {"pool": pool, "volume": volume})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    if network:
        nic = ET.SubElement(devices, "interface", {"type": "network"})
        ET.SubElement(nic, "source", {"network": network})
    else:
        nic = ET.SubElement(devices, "interface", {"type": "user"})
    ET.SubElement(nic, "model", {"type": "virtio"})
    serial = ET.SubElement(devices, "serial", {"type": "pty"})
    ET.SubElement(serial, "log", {"file": str(serial_log), "append": "off"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    rng = ET.SubElement(devices, "rng", {"model": "virtio"})
    ET.SubElement(rng, "backend", {"model": "random"}).text = "/dev/urandom"
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def virsh(*args: str, uri: str = LIBVIRT_URI) -> list[str]:
    """A virsh argv talking to `uri`."""
    return ["virsh", "--connect", uri, *args]


def default_pool_commands(path: Path = DEFAULT_POOL_DIR, uri: str = LIBVIRT_URI) -> list[list[str]]:
    """Define, build, start and autostart the `default` directory pool (as virt-manager does)."""
    return [virsh("pool-define-as", "default", "dir", "--target", str(path), uri=uri),
            virsh("pool-build", "default", uri=uri),
            virsh("pool-start", "default", uri=uri),
            virsh("pool-autostart", "default", uri=uri)]


def import_commands(image: Path, pool: str, volume: str, image_bytes: int,
                    uri: str = LIBVIRT_URI) -> list[list[str]]:
    """Create a volume the size of the qcow2 file, upload the file into it, refresh the pool."""
    return [virsh("vol-create-as", pool, volume, str(image_bytes), "--format", "qcow2", uri=uri),
            virsh("vol-upload", "--pool", pool, volume, str(image), uri=uri),
            virsh("pool-refresh", pool, uri=uri)]


def removal_commands(name: str, pool: str, volume: str, firmware: str,
                     uri: str = LIBVIRT_URI) -> list[list[str]]:
    """What undoes a publish: stop, undefine (with its UEFI vars), delete the volume."""
    undefine = virsh("undefine", name, uri=uri) + (["--nvram"] if firmware == "uefi" else [])
    return [virsh("destroy", name, uri=uri), undefine,
            virsh("vol-delete", "--pool", pool, volume, uri=uri)]


def parse_volume_xml(text: str) -> dict[str, Any]:
    """Format, capacity and path of a `virsh vol-dumpxml` document."""
    root = ET.fromstring(text)
    fmt = root.find("target/format")
    return {"format": fmt.get("type") if fmt is not None else None,
            "capacity": int(root.findtext("capacity", "0")),
            "path": root.findtext("target/path", "")}


@dataclass(frozen=True)
class LibvirtResult:
    """What publish_libvirt made, and the commands to use or undo it."""

    domain: str
    pool: str
    volume: str
    volume_path: str
    dom_type: str
    network: str | None
    serial_log: Path
    firmware: str

    def next_steps(self, uri: str = LIBVIRT_URI) -> list[str]:
        start = [shlex.join(virsh("start", self.domain, uri=uri)),
                 shlex.join(virsh("console", self.domain, uri=uri))
                 + f"   # or: tail -f {self.serial_log}"]
        undo = [shlex.join(c) for c in removal_commands(self.domain, self.pool, self.volume,
                                                        self.firmware, uri=uri)]
        return ["start it:", *(f"  {c}" for c in start), "remove it again:",
                *(f"  {c}" for c in undo)]


def check_libvirtd(uri: str = LIBVIRT_URI, log: Path | None = None) -> None:
    """PreflightError unless virsh is installed and libvirtd answers at `uri`."""
    if not check_requirements(["virsh"]).ok:
        raise PreflightError("virsh is not installed",
                             hint="apt-get install libvirt-clients libvirt-daemon-system")
    try:
        run(virsh("version", uri=uri), log=log)
    except HubkilnError as exc:
        raise PreflightError(
            f"libvirtd does not answer at {uri}: {exc.message.splitlines()[-1]}",
            hint="start it: `systemctl start libvirtd` (without systemd: `virtlogd -d; "
            "libvirtd -d`), as root") from None


def _succeeds(cmd: list[str]) -> bool:
    """Whether a probing command exits 0 (its output is not needed)."""
    return subprocess.run(cmd, capture_output=True).returncode == 0


def ensure_pool(pool: str, uri: str, log: Path | None) -> None:
    """Make sure `pool` exists and is active (creating `default` if it is missing)."""
    every = parse_name_list(run(virsh("pool-list", "--all", "--name", uri=uri), log=log))
    if pool not in every:
        if pool != "default":
            raise PublishError(f"libvirt has no storage pool {pool!r} (it has {every})",
                               hint="name an existing pool with --pool")
        for cmd in default_pool_commands(uri=uri):
            run(cmd, log=log)
        return
    active = parse_name_list(run(virsh("pool-list", "--name", uri=uri), log=log))
    if pool not in active:
        run(virsh("pool-start", pool, uri=uri), log=log)


def publish_libvirt(artifact: Artifact, *, pool: str = "default", name: str | None = None,
                    firmware: str = "bios", network: str | None = None,
                    accelerator: str | None = None, uri: str = LIBVIRT_URI,
                    log: Path | None = None) -> LibvirtResult:
    """Import the artifact's qcow2 into `pool` and define a domain named `name` (the image's
    stem by default) that is ready to start. Refuses to overwrite an existing domain or volume."""
    image = artifact.path("qcow2")
    name = name or artifact.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PublishError(f"{name!r} is not a usable domain name",
                           hint="use letters, digits, dots, dashes and underscores")
    volume = f"{name}.qcow2"
    check_libvirtd(uri, log)
    ensure_pool(pool, uri, log)
    if _succeeds(virsh("dominfo", name, uri=uri)) or \
            _succeeds(virsh("vol-info", "--pool", pool, volume, uri=uri)):
        undo = "; ".join(shlex.join(c) for c in removal_commands(name, pool, volume, firmware,
                                                                 uri=uri))
        raise PublishError(f"libvirt already has a domain {name!r} or a volume {volume!r} in "
                           f"pool {pool!r}", hint=f"choose another --name, or remove them: {undo}")
    active_nets = parse_name_list(run(virsh("net-list", "--name", uri=uri), log=log))
    net = choose_network(network, active_nets)
    dom_type = domain_type(choose_accelerator(accelerator).name)
    serial_log = SERIAL_LOG_DIR / f"{name}-serial.log"
    for cmd in import_commands(image, pool, volume, image.stat().st_size, uri=uri):
        run(cmd, log=log)
    info = parse_volume_xml(run(virsh("vol-dumpxml", "--pool", pool, volume, uri=uri), log=log))
    if info["format"] != "qcow2":
        raise PublishError(f"the imported volume reads as {info['format']!r}, not qcow2",
                           hint=f"check {info['path']} with `qemu-img info`")
    xml = render_domain_xml(
        name=name, pool=pool, volume=volume, resources=artifact.resources, dom_type=dom_type,
        firmware=firmware, network=net, serial_log=serial_log,
        description=f"hubkiln image {image.name} (profile {artifact.profile})")
    with tempfile.TemporaryDirectory(prefix="hubkiln-domain-") as tmp:
        (Path(tmp) / "domain.xml").write_text(xml, encoding="utf-8")
        run(virsh("define", str(Path(tmp) / "domain.xml"), uri=uri), log=log)
    return LibvirtResult(domain=name, pool=pool, volume=volume, volume_path=info["path"],
                         dom_type=dom_type, network=net, serial_log=serial_log,
                         firmware=firmware)
