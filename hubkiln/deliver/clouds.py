"""Publish to a cloud or a cluster hypervisor: the exact commands, printed, never run.

Proxmox, OpenStack, AWS, GCP and Azure each get the commands that upload the
image in the format that cloud takes (qcow2, raw, a GCE tar, a fixed VHD) and
register it, with the image's checksum to compare; a teacher or an IT team runs
them with their own credentials.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hubkiln.deliver.artifact import TARGETS, Artifact, PublishError


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
