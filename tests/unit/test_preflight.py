"""Host preflight: missing tools are all reported, with the apt-get command that installs them."""

from __future__ import annotations

import shutil

import pytest

from hubkiln import preflight
from hubkiln.errors import PreflightError
from hubkiln.preflight import (
    HOST_PACKAGES,
    SBIN_DIRS,
    HostCheck,
    check_requirements,
    describe_problems,
    packer_version_problem,
)


def fake_which(on_path: set[str], in_sbin: set[str] = frozenset()):
    """A `shutil.which` stand-in: names in `on_path` are on PATH, `in_sbin` only in /usr/sbin."""

    def which(name: str, mode: int = 0, path: str | None = None) -> str | None:
        if path is None:
            return f"/usr/bin/{name}" if name in on_path else None
        assert path.split(":") == list(SBIN_DIRS)
        return f"/usr/sbin/{name}" if name in in_sbin else None

    return which


def check(needs, *, on_path=(), in_sbin=(), files=()):
    return check_requirements(
        needs, which=fake_which(set(on_path), set(in_sbin)), exists=lambda p: p in files
    )


def test_everything_present():
    result = check(
        ["packer", "qemu-img", "/usr/share/OVMF/OVMF_CODE.fd"],
        on_path={"packer", "qemu-img"},
        files={"/usr/share/OVMF/OVMF_CODE.fd"},
    )
    assert result == HostCheck()
    assert result.ok and result.apt_command is None


def test_every_missing_item_is_listed_in_order_with_one_apt_command():
    needs = ["packer", "sgdisk", "qemu-img", "/usr/lib/grub/i386-pc", "ssh", "ssh-keygen"]
    result = check(needs, on_path={"qemu-img"})
    assert result.missing == ("packer", "sgdisk", "/usr/lib/grub/i386-pc", "ssh", "ssh-keygen")
    assert result.packages == ("packer", "gdisk", "grub-pc-bin", "openssh-client")
    assert result.apt_command == "sudo apt-get install packer gdisk grub-pc-bin openssh-client"
    assert not result.ok


def test_duplicates_are_checked_once():
    assert check(["xorriso", "xorriso"]).missing == ("xorriso",)


def test_unknown_tool_is_reported_without_a_package():
    result = check(["frobnicate", "mcopy"])
    assert result.unknown == ("frobnicate",)
    assert result.packages == ("mtools",)
    message, hint = describe_problems(result)
    assert "  - frobnicate (no known Debian package)" in message
    assert hint == "install with: sudo apt-get install mtools; install frobnicate by hand"


def test_tool_only_in_sbin_is_reported_as_off_path():
    result = check(["mkfs.ext4", "mkfs.vfat"], in_sbin={"mkfs.ext4"})
    assert result.missing == ("mkfs.vfat",)
    assert result.not_on_path == (("mkfs.ext4", "/usr/sbin/mkfs.ext4"),)
    message, hint = describe_problems(result)
    assert "mkfs.ext4 is installed as /usr/sbin/mkfs.ext4, but its directory is not on PATH" in (
        message
    )
    assert 'export PATH="$PATH:/usr/sbin"' in hint
    assert "sudo apt-get install dosfstools" in hint


def test_describe_problems_message():
    message, hint = describe_problems(check(["qemu-system-x86_64", "/usr/share/OVMF/OVMF_CODE.fd"]))
    assert message == (
        "2 host tool(s) or file(s) the build needs are missing:\n"
        "  - qemu-system-x86_64 (Debian package qemu-system-x86)\n"
        "  - /usr/share/OVMF/OVMF_CODE.fd (Debian package ovmf)"
    )
    assert hint == "install with: sudo apt-get install qemu-system-x86 ovmf"


def test_package_table_matches_debian_12():
    """The table the brief asked for, with grub-mkimage checked by `dpkg -S` (grub-common)."""
    assert HOST_PACKAGES == {
        "packer": "packer",
        "qemu-system-x86_64": "qemu-system-x86",
        "qemu-img": "qemu-utils",
        "mmdebstrap": "mmdebstrap",
        "sgdisk": "gdisk",
        "mkfs.vfat": "dosfstools",
        "mcopy": "mtools",
        "xorriso": "xorriso",
        "mkfs.ext4": "e2fsprogs",
        "grub-mkimage": "grub-common",
        "/usr/share/OVMF/OVMF_CODE.fd": "ovmf",
        "/usr/lib/grub/i386-pc": "grub-pc-bin",
        "/usr/lib/grub/x86_64-efi": "grub-efi-amd64-bin",
        "ssh-keygen": "openssh-client",
        "ssh": "openssh-client",
        "shellcheck": "shellcheck",
        "chromium": "chromium",
        "virsh": "libvirt-clients",
        "libvirtd": "libvirt-daemon-system",
        "systemd-nspawn": "systemd-container",
        "caddy": "caddy",
        "fail2ban-regex": "fail2ban",
    }


def test_check_host_tools_raises_with_everything(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", fake_which({"packer"}))
    with pytest.raises(PreflightError) as err:
        preflight.check_host_tools(["packer", "mmdebstrap", "/nonexistent/firmware.fd"])
    assert "mmdebstrap (Debian package mmdebstrap)" in err.value.message
    assert "/nonexistent/firmware.fd (no known Debian package)" in err.value.message
    assert "sudo apt-get install mmdebstrap" in err.value.hint


def test_check_host_tools_passes_when_everything_is_present():
    preflight.check_host_tools(["sh", "/"])


# --- Packer version -----------------------------------------------------------------------


def test_packer_version_problem():
    assert packer_version_problem((1, 6, 6)) is None
    assert packer_version_problem((1, 11, 2)) is None
    assert packer_version_problem((2, 0, 0), (1, 6, 6)) is None
    assert packer_version_problem((1, 5, 6)) == (
        "Packer 1.5.6 is too old: hubkiln needs Packer 1.6.6 or newer (HCL2 templates)"
    )
    assert "1.6.5 is too old" in packer_version_problem((1, 6, 5))


def test_check_packer_version_raises_with_a_hint(monkeypatch):
    monkeypatch.setattr(preflight, "packer_version", lambda packer: (1, 5, 0))
    with pytest.raises(PreflightError, match="1.5.0 is too old") as err:
        preflight.check_packer_version()
    assert "apt-get install packer" in err.value.hint


def test_check_packer_version_returns_the_version(monkeypatch):
    monkeypatch.setattr(preflight, "packer_version", lambda packer: (1, 6, 6))
    assert preflight.check_packer_version() == (1, 6, 6)


@pytest.mark.skipif(shutil.which("packer") is None, reason="needs packer")
def test_host_packer_is_new_enough():
    assert preflight.check_packer_version() >= (1, 6, 6)
