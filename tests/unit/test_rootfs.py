"""Root filesystem bootstrap: the mmdebstrap command line, tree checks and clean-up,
and the pinned Ubuntu archive key (checked with gpg when it is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hubkiln.errors import BuildError
from hubkiln.stages import rootfs
from hubkiln.stages.rootfs import (
    KERNEL_IMG_CONF,
    KERNEL_IMG_CONF_HOOK,
    OSES,
    UBUNTU_KEYRING,
    check_rootfs,
    mmdebstrap_command,
    mmdebstrap_knows_suite,
    package_list,
    resolve_in_root,
    scrub_host_identity,
    sources_lines,
    strip_apt_proxy,
    write_default_locale,
)

UBUNTU_2018_FINGERPRINT = "F6ECB3762474EDA9D21B7022871920D1991BC93C"


def option(cmd: list[str], name: str) -> list[str]:
    return [c.split("=", 1)[1] for c in cmd if c.startswith(f"--{name}=")]


@pytest.mark.parametrize("os_id", sorted(OSES))
def test_command_bootstraps_a_directory_as_root_with_minbase(os_id, tmp_path):
    cmd = mmdebstrap_command(os_id, tmp_path / "t")
    assert cmd[0] == "mmdebstrap"
    assert "--mode=root" in cmd
    assert "--variant=minbase" in cmd
    assert "--format=directory" in cmd
    assert option(cmd, "aptopt") == ['APT::Install-Recommends "false"']
    assert cmd[-2:] == [OSES[os_id].suite, str(tmp_path / "t")]


def test_ubuntu_uses_noble_main_universe_and_the_shipped_key(tmp_path):
    cmd = mmdebstrap_command("ubuntu-24.04", tmp_path)
    assert "noble" in cmd
    assert option(cmd, "components") == ["main,universe"]
    assert option(cmd, "keyring") == [str(UBUNTU_KEYRING)]
    packages = option(cmd, "include")[0].split(",")
    for needed in ("linux-image-virtual", "apt", "lsb-release", "cloud-init", "netplan.io",
                   "openssh-server", "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common",
                   "initramfs-tools", "ubuntu-keyring", "systemd-resolved"):
        assert needed in packages


def test_debian_uses_bookworm_main_and_the_host_keyring(tmp_path):
    cmd = mmdebstrap_command("debian-12", tmp_path)
    assert "bookworm" in cmd
    assert option(cmd, "components") == ["main"]
    assert option(cmd, "keyring") == ["/usr/share/keyrings/debian-archive-keyring.gpg"]
    assert "linux-image-cloud-amd64" in option(cmd, "include")[0].split(",")


@pytest.mark.parametrize("os_id", sorted(OSES))
def test_never_installs_a_grub_package_that_writes_to_a_device(os_id):
    packages = package_list(os_id)
    assert not {"grub-pc", "grub-efi-amd64", "grub-efi", "grub-efi-amd64-signed"} & set(packages)
    assert len(packages) == len(set(packages))


def test_no_mirror_by_default_so_mmdebstrap_picks_the_archive(tmp_path):
    cmd = mmdebstrap_command("ubuntu-24.04", tmp_path / "t")
    assert cmd[-1] == str(tmp_path / "t")
    assert not [c for c in cmd if "://" in c]


def test_mirror_replaces_the_archive_with_all_three_pockets(tmp_path):
    cmd = mmdebstrap_command("ubuntu-24.04", tmp_path / "t", mirror="http://127.0.0.1:3142/ubuntu")
    assert cmd[-3:] == [
        "deb http://127.0.0.1:3142/ubuntu noble main universe",
        "deb http://127.0.0.1:3142/ubuntu noble-updates main universe",
        "deb http://127.0.0.1:3142/ubuntu noble-security main universe",
    ]


def test_debian_mirror_needs_a_security_mirror():
    with pytest.raises(BuildError, match="security"):
        sources_lines(OSES["debian-12"], "http://127.0.0.1/debian")
    lines = sources_lines(OSES["debian-12"], "http://127.0.0.1/debian", "http://127.0.0.1/sec")
    assert lines[-1] == "deb http://127.0.0.1/sec bookworm-security main"


def test_apt_proxy_is_an_aptopt(tmp_path):
    cmd = mmdebstrap_command("debian-12", tmp_path, apt_proxy="http://127.0.0.1:3142")
    assert '--aptopt=Acquire::http::Proxy "http://127.0.0.1:3142"' in cmd


def test_extra_packages_are_added_once(tmp_path):
    cmd = mmdebstrap_command("debian-12", tmp_path, extra_packages=["vim-tiny", "sudo"])
    packages = option(cmd, "include")[0].split(",")
    assert packages.count("sudo") == 1 and "vim-tiny" in packages


def test_unknown_os_names_the_supported_ones(tmp_path):
    with pytest.raises(BuildError) as e:
        mmdebstrap_command("fedora-40", tmp_path)
    assert "ubuntu-24.04" in e.value.hint and "debian-12" in e.value.hint


def test_kernel_img_conf_hook_writes_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    hook = KERNEL_IMG_CONF_HOOK.split("=", 1)[1]
    subprocess.run(["sh", "-c", hook, "exec", str(tmp_path)], check=True)
    assert (tmp_path / "etc/kernel-img.conf").read_text() == KERNEL_IMG_CONF


def test_mmdebstrap_needs_distro_info_to_know_noble(tmp_path):
    ubuntu, debian = OSES["ubuntu-24.04"], OSES["debian-12"]
    none = tmp_path / "none"
    assert not mmdebstrap_knows_suite(ubuntu, tmp_path, none)
    (tmp_path / "ubuntu.csv").write_text(
        "version,codename,series,created,release,eol\n"
        "24.04 LTS,Noble Numbat,noble,2023-10-12,2024-04-25,2029-05-31\n"
    )
    assert mmdebstrap_knows_suite(ubuntu, tmp_path, none)
    assert mmdebstrap_knows_suite(debian, none, none)


def test_strip_apt_proxy_keeps_other_settings():
    text = 'APT::Install-Recommends "false";\nAcquire::http::Proxy "http://127.0.0.1:3142";\n'
    assert strip_apt_proxy(text) == 'APT::Install-Recommends "false";\n'


def make_tree(root: Path, *, absolute: bool = False) -> None:
    (root / "boot").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "boot/vmlinuz-6.8.0-1-generic").write_bytes(b"kernel")
    (root / "boot/initrd.img-6.8.0-1-generic").write_bytes(b"initrd")
    kernel = "/boot/vmlinuz-6.8.0-1-generic" if absolute else "vmlinuz-6.8.0-1-generic"
    (root / "boot/vmlinuz").symlink_to(kernel)
    (root / "boot/initrd.img").symlink_to("initrd.img-6.8.0-1-generic")


def test_resolve_in_root_follows_absolute_links_inside_the_tree(tmp_path):
    make_tree(tmp_path, absolute=True)
    assert resolve_in_root(tmp_path, "/boot/vmlinuz") == tmp_path / "boot/vmlinuz-6.8.0-1-generic"


def test_check_rootfs_accepts_a_tree_with_kernel_and_initrd(tmp_path):
    make_tree(tmp_path)
    check_rootfs(tmp_path)


def test_check_rootfs_rejects_a_dangling_kernel_link(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "boot/vmlinuz-6.8.0-1-generic").unlink()
    with pytest.raises(BuildError, match="/boot/vmlinuz"):
        check_rootfs(tmp_path)


def test_scrub_host_identity(tmp_path):
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/apt/apt.conf.d").mkdir(parents=True)
    (tmp_path / "etc/hostname").write_text("buildhost\n")
    (tmp_path / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (tmp_path / "etc/ssh/sshd_config").write_text("")
    (tmp_path / "etc/apt/apt.conf.d/99mmdebstrap").write_text(
        'Acquire::http::Proxy "http://127.0.0.1:3142";\n'
    )
    scrub_host_identity(tmp_path)
    assert (tmp_path / "etc/hostname").read_text() == "localhost\n"
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (tmp_path / "etc/apt/apt.conf.d/99mmdebstrap").read_text() == ""


def test_default_locale_is_added_only_when_unset(tmp_path):
    conf = tmp_path / "etc/default/locale"
    write_default_locale(tmp_path)
    assert conf.read_text() == "LANG=C.UTF-8\n"
    conf.write_text("#  File generated by update-locale\n")
    write_default_locale(tmp_path)
    assert conf.read_text() == "#  File generated by update-locale\nLANG=C.UTF-8\n"
    conf.write_text("LANG=en_GB.UTF-8\n")
    write_default_locale(tmp_path)
    assert conf.read_text() == "LANG=en_GB.UTF-8\n"


def test_bootstrap_refuses_an_existing_target(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "check_bootstrap_host", lambda spec: None)
    (tmp_path / "t").mkdir()
    with pytest.raises(BuildError, match="already exists"):
        rootfs.bootstrap_rootfs("debian-12", tmp_path / "t", log=tmp_path / "log")


def test_failed_bootstrap_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "check_bootstrap_host", lambda spec: None)

    def fake_run(cmd, **kwargs):
        Path(cmd[-1], "half-done").write_text("")
        raise BuildError("mmdebstrap failed")

    monkeypatch.setattr(rootfs, "run", fake_run)
    with pytest.raises(BuildError):
        rootfs.bootstrap_rootfs("debian-12", tmp_path / "t", log=tmp_path / "log")
    assert list(tmp_path.iterdir()) == []


def test_successful_bootstrap_is_renamed_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "check_bootstrap_host", lambda spec: None)

    def fake_run(cmd, **kwargs):
        root = Path(cmd[-1])
        assert root.name.startswith(".t.") and root.name.endswith(".partial")
        make_tree(root)

    monkeypatch.setattr(rootfs, "run", fake_run)
    rootfs.bootstrap_rootfs("debian-12", tmp_path / "t", log=tmp_path / "log")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert (tmp_path / "t/etc/hostname").read_text() == "localhost\n"


# ------------------------------------------------------------ the pinned key


def test_ubuntu_keyring_is_shipped_with_a_readme_naming_its_fingerprint():
    assert UBUNTU_KEYRING.is_file()
    readme = (UBUNTU_KEYRING.parent / "README.md").read_text()
    assert "F6EC B376 2474 EDA9 D21B  7022 8719 20D1 991B C93C" in readme


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_ubuntu_keyring_holds_exactly_the_2018_archive_key(tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--show-keys",
         str(UBUNTU_KEYRING)],
        capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"},
    ).stdout
    fingerprints = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    assert fingerprints == [UBUNTU_2018_FINGERPRINT]
    uids = [line.split(":")[9] for line in out.splitlines() if line.startswith("uid:")]
    assert uids == ["Ubuntu Archive Automatic Signing Key (2018) <ftpmaster@ubuntu.com>"]
