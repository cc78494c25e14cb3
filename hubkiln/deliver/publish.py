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

from hubkiln.deliver.artifact import TARGET_FORMATS, TARGETS, PublishError, load_artifact
from hubkiln.deliver.clouds import cloud_commands
from hubkiln.deliver.libvirt import FIRMWARES, publish_libvirt

# --- libvirt (pure) ---------------------------------------------------------------


# --- libvirt (side effects) ---------------------------------------------------------


# --- clouds (pure) ------------------------------------------------------------------


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
