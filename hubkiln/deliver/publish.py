"""Publish a built image: import it into a local libvirt, or print the commands for a cloud.

`publish_libvirt` uploads the qcow2 into a libvirt storage pool (`virsh
vol-create-as` + `vol-upload`) and defines a domain that is ready to start:
q35, virtio disk and network, serial console logged to a file, BIOS or
UEFI, CPUs and memory from the profile (formats.vm_resources), type `kvm`
only when accel.py finds a working KVM, else `qemu` (TCG). It never starts
the domain. `cloud_commands` returns the exact shell commands for Proxmox,
OpenStack, AWS, Google Cloud and Azure with this artifact's paths and names
filled in; hubkiln runs none of them.

Limits: libvirt is reached at `qemu:///system` (a local root daemon); a
missing `default` pool is created as a directory pool at
/var/lib/libvirt/images, any other missing pool is an error. Without an active
libvirt network the domain gets user-mode networking (outbound only). The
cloud commands are written from each provider's documentation and checked
for shape here, but were not run against the clouds (no accounts here).
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

from hubkiln.errors import HubkilnError, PreflightError
from hubkiln.machine.vm import TCG_CPU_MODEL
from hubkiln.proc import run
from hubkiln.stages import artifacts
from hubkiln.stages.formats import VmResources

LIBVIRT_URI = "qemu:///system"
DEFAULT_POOL_DIR = Path("/var/lib/libvirt/images")
SERIAL_LOG_DIR = Path("/var/log/libvirt/qemu")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
TARGETS = ("libvirt", "proxmox", "openstack", "aws", "gcp", "azure")
#: Which artifact format each target imports.
TARGET_FORMATS = {"libvirt": "qcow2", "proxmox": "qcow2", "openstack": "qcow2", "aws": "raw",
                  "gcp": "gce", "azure": "vhd"}
FIRMWARES = ("bios", "uefi")


class PublishError(HubkilnError):
    """Publishing failed, or the build lacks what the target needs."""


@dataclass(frozen=True)
class Artifact:
    """A finished build as publishing sees it (from output/<profile>/manifest.json)."""

    profile: str
    stem: str
    folder: Path
    files: dict[str, dict[str, Any]]  # format → manifest entry
    os_id: str
    resources: VmResources

    def path(self, fmt: str) -> Path:
        """The artifact of `fmt`, or PublishError naming the profile setting that adds it."""
        if fmt not in self.files:
            raise PublishError(
                f"the build of {self.profile} has no {fmt} image (it has "
                f"{', '.join(self.files)})",
                hint=f"add {fmt} to outputs.formats in the profile and build again")
        return self.folder / self.files[fmt]["name"]


def artifact_from_manifest(manifest: dict[str, Any], folder: Path,
                           resources: VmResources) -> Artifact:
    """Pure: the Artifact that `manifest` (in `folder`) describes."""
    files = {f["format"]: f for f in manifest["files"]}
    first = manifest["files"][0]["name"]
    return Artifact(profile=manifest["profile"], stem=first.split(".", 1)[0], folder=folder,
                    files=files, os_id=manifest["os"]["id"], resources=resources)


def load_artifact(profile_ref: str, image: str | None = None) -> Artifact:
    """The profile's last build, or a single qcow2 `image` standing in for it."""
    from hubkiln.config.profile import load_profile
    from hubkiln.paths import output_dir
    from hubkiln.stages.formats import vm_resources

    profile = load_profile(profile_ref)
    resources = vm_resources(profile["hub"]["limits"])
    if image:
        path = Path(image).resolve()
        if not path.exists():
            raise PublishError(f"no image at {path}", hint="give the path of a built .qcow2")
        return Artifact(profile=profile.name, stem=path.name.split(".", 1)[0],
                        folder=path.parent,
                        files={"qcow2": {"name": path.name, "format": "qcow2",
                                         "virtual_bytes": _virtual_bytes(path)}},
                        os_id=profile["base"]["os"], resources=resources)
    folder = output_dir(profile)
    manifest = artifacts.read_manifest(folder)
    if manifest is None:
        raise PublishError(f"no built image for {profile.name} in {folder}",
                           hint=f"run `invoke build --profile={profile_ref}` first")
    return artifact_from_manifest(manifest, folder, resources)


def _virtual_bytes(image: Path) -> int:
    import json

    return json.loads(run(["qemu-img", "info", "--output=json", str(image)]))["virtual-size"]


# --- libvirt (pure) ---------------------------------------------------------------


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


# --- libvirt (side effects) ---------------------------------------------------------


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
    from hubkiln.preflight import check_requirements

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
    from hubkiln.machine.accel import choose_accelerator

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


# --- clouds (pure) ------------------------------------------------------------------


def gce_image_name(stem: str) -> str:
    """A Google Cloud image name: lower case, letters, digits and dashes, 63 at most."""
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    return (name if name[:1].isalpha() else f"hubkiln-{name}")[:63].rstrip("-")


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def proxmox_commands(a: Artifact) -> list[str]:
    image = a.path("qcow2")
    r = a.resources
    return [
        "# On your machine: copy the image to the Proxmox VE host.",
        "PVE_HOST=root@your-proxmox-host",
        f"scp {_q(image)} \"$PVE_HOST:/var/lib/vz/images/{image.name}\"",
        "# On the Proxmox VE host (set the VM id, storage and bridge):",
        "VMID=9000 STORAGE=local-lvm BRIDGE=vmbr0",
        f"qm create \"$VMID\" --name {_q(a.stem)} --ostype l26 --machine q35 "
        f"--cores {r.cpus} --memory {r.memory_mib} --net0 \"virtio,bridge=$BRIDGE\" "
        "--scsihw virtio-scsi-pci --serial0 socket",
        f"qm disk import \"$VMID\" /var/lib/vz/images/{_q(image.name)} \"$STORAGE\" "
        "--format qcow2",
        "# attach the disk that `qm disk import` reported (unused0):",
        "qm set \"$VMID\" --scsi0 \"$STORAGE:vm-$VMID-disk-0,discard=on\" --boot order=scsi0",
        "# Launch settings: upload `invoke seed --config launch.yaml --output seed.iso` "
        "as ISO and attach it:",
        "# qm set \"$VMID\" --ide2 local:iso/seed.iso,media=cdrom",
        "qm start \"$VMID\"",
    ]


def openstack_commands(a: Artifact) -> list[str]:
    image = a.path("qcow2")
    distro, version = a.os_id.split("-", 1)
    virtual_gib = -(-a.files["qcow2"].get("virtual_bytes", 0) // (1 << 30)) or 1
    return [
        "# With your OpenStack credentials loaded (source your openrc file):",
        "openstack image create --disk-format qcow2 --container-format bare "
        f"--file {_q(image)} --min-disk {virtual_gib} --min-ram {a.resources.memory_mib} "
        f"--property os_distro={distro} --property os_version={version} "
        "--property hw_disk_bus=virtio --property hw_vif_model=virtio " + _q(a.stem),
        "FLAVOR=m1.medium NETWORK=private   # a flavor and network of your project",
        f"openstack server create --image {_q(a.stem)} --flavor \"$FLAVOR\" "
        "--network \"$NETWORK\" --user-data user-data.yaml " + _q(a.stem),
        "# user-data.yaml: `invoke seed --config launch.yaml --user-data user-data.yaml`",
    ]


def aws_commands(a: Artifact) -> list[str]:
    image = a.path("raw")
    key = f"hubkiln/{image.name}"
    return [
        "# Needs an S3 bucket in the import region and the `vmimport` service role",
        "# (see the VM Import/Export guide).",
        "BUCKET=your-bucket",
        f"aws s3 cp {_q(image)} \"s3://$BUCKET/{key}\"",
        f"aws ec2 import-image --description {_q(a.stem)} --boot-mode legacy-bios "
        "--disk-containers "
        f"\"Format=raw,UserBucket={{S3Bucket=$BUCKET,S3Key={key}}}\" "
        f"--tag-specifications 'ResourceType=import-image-task,Tags=[{{Key=Name,"
        f"Value={a.stem}}}]'",
        "aws ec2 describe-import-image-tasks --filters "
        f"'Name=tag:Name,Values={a.stem}'   # wait for Status completed, note the ImageId",
        "aws ec2 run-instances --image-id ami-FROM-ABOVE --instance-type t3.medium "
        "--user-data file://user-data.yaml",
    ]


def gcp_commands(a: Artifact) -> list[str]:
    archive = a.path("gce")
    image = gce_image_name(a.stem)
    return [
        "BUCKET=your-bucket   # a Cloud Storage bucket of your project",
        f"gcloud storage cp {_q(archive)} \"gs://$BUCKET/{archive.name}\"",
        f"gcloud compute images create {image} --source-uri \"gs://$BUCKET/{archive.name}\" "
        "--guest-os-features UEFI_COMPATIBLE,VIRTIO_SCSI_MULTIQUEUE "
        f"--description {_q(f'hubkiln {a.profile}: {a.stem}')}",
        f"gcloud compute instances create {image} --image {image} --machine-type e2-medium "
        "--metadata-from-file user-data=user-data.yaml",
    ]


def azure_commands(a: Artifact) -> list[str]:
    vhd = a.path("vhd")
    return [
        "GROUP=your-group ACCOUNT=yourstorageaccount CONTAINER=images",
        f"az storage blob upload --account-name \"$ACCOUNT\" --container-name \"$CONTAINER\" "
        f"--name {_q(vhd.name)} --file {_q(vhd)} --type page",
        f"az image create --resource-group \"$GROUP\" --name {_q(a.stem)} --os-type Linux "
        "--hyper-v-generation V2 --source \"$(az storage blob url --account-name \"$ACCOUNT\" "
        f"--container-name \"$CONTAINER\" --name {_q(vhd.name)} --output tsv)\"",
        f"az vm create --resource-group \"$GROUP\" --name {_q(a.stem)} --image {_q(a.stem)} "
        "--size Standard_B2s --custom-data user-data.yaml --generate-ssh-keys",
    ]


CLOUD_COMMANDS = {"proxmox": proxmox_commands, "openstack": openstack_commands,
                  "aws": aws_commands, "gcp": gcp_commands, "azure": azure_commands}


def cloud_commands(target: str, artifact: Artifact) -> list[str]:
    """The shell lines that publish `artifact` to `target` (lines starting `#` explain)."""
    if target not in CLOUD_COMMANDS:
        raise PublishError(f"unknown target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    return CLOUD_COMMANDS[target](artifact)


# --- the task -----------------------------------------------------------------------


def publish(profile_ref: str, *, to: str, pool: str = "default", name: str | None = None,
            firmware: str = "bios", network: str | None = None, image: str | None = None,
            accelerator: str | None = None) -> list[str]:
    """`invoke publish`: import into libvirt, or return a cloud's commands; the lines to print."""
    if to not in TARGETS:
        raise PublishError(f"unknown target {to!r}", hint=f"use --to with one of "
                           f"{', '.join(TARGETS)}")
    if firmware not in FIRMWARES:
        raise PublishError(f"unknown firmware {firmware!r}", hint="use --firmware bios or uefi")
    artifact = load_artifact(profile_ref, image)
    if to != "libvirt":
        artifact.path(TARGET_FORMATS[to])
        return [f"# Publish {artifact.stem} to {to}: hubkiln runs none of this; check each "
                "line, then run it.", *cloud_commands(to, artifact)]
    result = publish_libvirt(artifact, pool=pool, name=name, firmware=firmware,
                             network=network, accelerator=accelerator)
    net = f"network {result.network}" if result.network else "user-mode networking " \
        "(no active libvirt network; give --network NAME)"
    return [f"defined libvirt domain {result.domain} ({result.dom_type}, {result.firmware}, "
            f"{artifact.resources.cpus} CPUs, {artifact.resources.memory_mib} MiB, {net})",
            f"volume {result.volume} in pool {result.pool}: {result.volume_path}",
            f"serial console log: {result.serial_log}", *result.next_steps()]
