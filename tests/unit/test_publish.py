"""libvirt domain XML and commands, cloud commands: pure functions of the artifact."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hubkiln.config.profile import VmResources
from hubkiln.deliver import clouds, libvirt
from hubkiln.deliver.artifact import Artifact, PublishError, artifact_from_manifest

STEM = "hubkiln-ci-2026-fall"
FOLDER = Path("/srv/output/ci")
MANIFEST = {
    "profile": "ci",
    "os": {"id": "ubuntu-24.04"},
    "files": [{"name": f"{STEM}{suffix}", "format": fmt, "virtual_bytes": 4 << 30}
              for fmt, suffix in (("qcow2", ".qcow2"), ("raw", ".raw"), ("vhd", ".vhd"),
                                  ("gce", ".gce.tar.gz"), ("ova", ".ova"))],
}


@pytest.fixture
def artifact() -> Artifact:
    return artifact_from_manifest(MANIFEST, FOLDER, VmResources(2, 3072))


def domain(**overrides) -> ET.Element:
    values = dict(name="course", pool="default", volume="course.qcow2",
                  resources=VmResources(2, 3072), dom_type="qemu", firmware="bios",
                  network=None, serial_log=Path("/var/log/libvirt/qemu/course-serial.log"))
    return ET.fromstring(libvirt.render_domain_xml(**{**values, **overrides}))


def test_artifact_reads_the_manifest(artifact):
    assert artifact.stem == STEM and artifact.path("gce") == FOLDER / f"{STEM}.gce.tar.gz"


def test_a_missing_format_names_the_setting(artifact):
    only_qcow2 = Artifact(**{**artifact.__dict__, "files": {"qcow2": artifact.files["qcow2"]}})
    with pytest.raises(PublishError) as err:
        only_qcow2.path("vhd")
    assert "outputs.formats" in err.value.hint


def test_domain_type_is_kvm_only_with_kvm():
    assert libvirt.domain_type("kvm") == "kvm"
    assert libvirt.domain_type("tcg") == "qemu"


def test_domain_is_q35_with_virtio_and_a_logged_serial_console():
    dom = domain()
    assert dom.get("type") == "qemu" and dom.findtext("name") == "course"
    assert dom.find("os/type").get("machine") == "q35"
    assert dom.findtext("memory") == "3072" and dom.find("memory").get("unit") == "MiB"
    assert dom.findtext("vcpu") == "2"
    disk = dom.find("devices/disk")
    assert disk.find("source").attrib == {"pool": "default", "volume": "course.qcow2"}
    assert disk.find("target").get("bus") == "virtio"
    assert disk.find("driver").get("type") == "qcow2"
    assert dom.find("devices/interface/model").get("type") == "virtio"
    assert dom.find("devices/serial/log").get("file").endswith("course-serial.log")
    assert dom.find("devices/console/target").get("type") == "serial"


def test_bios_domain_has_no_loader_and_tcg_emulates_every_cpu_feature():
    dom = domain()
    assert dom.find("os/loader") is None and dom.find("cpu").get("mode") == "custom"
    assert dom.findtext("cpu/model") == "Nehalem"


def test_uefi_domain_uses_ovmf_without_secure_boot():
    dom = domain(firmware="uefi")
    loader = dom.find("os/loader")
    assert loader.get("type") == "pflash" and "secboot" not in loader.text
    assert dom.find("os/nvram").get("template").endswith("OVMF_VARS.fd")


def test_kvm_domain_passes_the_host_cpu_through():
    assert domain(dom_type="kvm").find("cpu").get("mode") == "host-passthrough"


def test_network_or_user_mode():
    assert domain(network="default").find("devices/interface").get("type") == "network"
    assert domain().find("devices/interface").get("type") == "user"
    assert libvirt.choose_network(None, ["default"]) == "default"
    assert libvirt.choose_network(None, []) is None
    assert libvirt.choose_network("lab", []) == "lab"


def test_bad_firmware_is_refused():
    with pytest.raises(ValueError):
        domain(firmware="coreboot")


def test_import_creates_uploads_and_refreshes():
    create, upload, refresh = libvirt.import_commands(Path("/o/x.qcow2"), "default", "x.qcow2",
                                                      1234)
    assert create[:3] == ["virsh", "--connect", "qemu:///system"]
    assert create[3:] == ["vol-create-as", "default", "x.qcow2", "1234", "--format", "qcow2"]
    assert upload[3:] == ["vol-upload", "--pool", "default", "x.qcow2", "/o/x.qcow2"]
    assert refresh[3:] == ["pool-refresh", "default"]


def test_removal_drops_uefi_vars_only_for_uefi():
    bios = libvirt.removal_commands("x", "default", "x.qcow2", "bios")
    uefi = libvirt.removal_commands("x", "default", "x.qcow2", "uefi")
    assert "--nvram" not in bios[1] and uefi[1][-1] == "--nvram"
    assert bios[2][3:] == ["vol-delete", "--pool", "default", "x.qcow2"]


def test_default_pool_is_a_directory_pool():
    commands = libvirt.default_pool_commands()
    assert commands[0][3:] == ["pool-define-as", "default", "dir", "--target",
                               "/var/lib/libvirt/images"]
    assert [c[3] for c in commands[1:]] == ["pool-build", "pool-start", "pool-autostart"]


def test_volume_xml_is_parsed():
    text = ("<volume><capacity unit='bytes'>4294967296</capacity><target>"
            "<path>/var/lib/libvirt/images/x.qcow2</path><format type='qcow2'/></target>"
            "</volume>")
    assert libvirt.parse_volume_xml(text) == {
        "format": "qcow2", "capacity": 4 << 30, "path": "/var/lib/libvirt/images/x.qcow2"}


def test_gce_image_names_are_valid():
    assert clouds.gce_image_name("hubkiln-ci-2026.Fall_b") == "hubkiln-ci-2026-fall-b"
    assert clouds.gce_image_name("2026") == "hubkiln-2026"
    assert len(clouds.gce_image_name("a" * 80)) == 63


@pytest.mark.parametrize("target,fmt", [("proxmox", "qcow2"), ("openstack", "qcow2"),
                                        ("aws", "raw"), ("gcp", "gce"), ("azure", "vhd")])
def test_cloud_commands_name_this_artifact_and_parse_as_shell(artifact, target, fmt):
    lines = clouds.cloud_commands(target, artifact)
    text = "\n".join(lines)
    assert artifact.files[fmt]["name"] in text
    for line in lines:
        shlex.split(line, comments=True)  # balanced quotes


def test_cloud_commands_use_the_full_path_of_the_file_to_upload(artifact):
    assert str(FOLDER / f"{STEM}.raw") in "\n".join(clouds.cloud_commands("aws", artifact))
    assert str(FOLDER / f"{STEM}.vhd") in "\n".join(clouds.cloud_commands("azure", artifact))
    gcp = "\n".join(clouds.cloud_commands("gcp", artifact))
    assert "gcloud compute images create hubkiln-ci-2026-fall " in gcp


def test_cloud_commands_carry_the_profile_resources(artifact):
    proxmox = " ".join(clouds.cloud_commands("proxmox", artifact))
    assert "--cores 2" in proxmox and "--memory 3072" in proxmox
    openstack = " ".join(clouds.cloud_commands("openstack", artifact))
    assert "--min-disk 4" in openstack and "os_distro=ubuntu" in openstack


def test_unknown_target_is_refused(artifact):
    with pytest.raises(PublishError):
        clouds.cloud_commands("vsphere", artifact)

