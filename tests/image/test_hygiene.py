"""Image hygiene on the booted image (HARDENING.md "Image hygiene"): what the seal
removed must not be there, and what every instance makes for itself must be its own."""

from __future__ import annotations

from typing import Any

import pytest

BUILD_USER = "hubkiln-build"
HISTORIES = [".bash_history", ".python_history", ".lesshst", ".viminfo", ".node_repl_history",
             ".wget-hsts", ".ipython/profile_default/history.sqlite"]


def test_no_build_user(host: Any):
    assert not host.user(BUILD_USER).exists
    assert BUILD_USER not in host.file("/etc/group").content_string


def test_no_sudo_rule_names_the_build_user(host):
    assert host.run(f"grep -rlw {BUILD_USER} /etc/sudoers /etc/sudoers.d").stdout == ""


def test_no_build_files_left(host):
    """The build CA and the provision folder live on /run during the build, never on disk."""
    leftovers = host.run("ls -d /run/hubkiln-build /var/tmp/hubkiln-* /var/tmp/hubkiln-content "
                         "2>/dev/null").stdout.split()
    assert leftovers == []


def test_no_build_ca_copy(host):
    """The only CA bundle is the system's; no PEM bundle sits where the build put its copy."""
    found = host.run("find /etc /root /home /opt /srv /usr/local /var -xdev "
                     "\\( -name 'build-ca.pem' -o -name 'ca.pem' \\) -print").stdout.split()
    assert found == []


@pytest.mark.parametrize("key", ["Acquire::http::Proxy", "Acquire::https::Proxy"])
def test_no_apt_proxy(host, key):
    assert host.run(f"apt-config dump {key}").stdout.strip() == ""
    assert not host.file("/etc/apt/apt.conf.d/00hubkiln-build-proxy").exists


def test_no_proxy_in_the_global_environment(host):
    assert "proxy" not in host.file("/etc/environment").content_string.lower()


@pytest.mark.parametrize("name", HISTORIES)
def test_no_history_in_roots_home(host, name):
    assert not host.file(f"/root/{name}").exists


def test_root_is_locked(host):
    assert host.run("passwd -S root").stdout.split()[1] == "L"


def test_only_launch_keys_are_authorized(host):
    """The build key went with the seal; the admin keys come from the launch settings
    (cloud-init leaves root an empty file: no key)."""
    files = host.run("find /root /home /etc /var /srv /opt -xdev \\( -name 'authorized_keys*' "
                     "-o -path '/etc/ssh/hubkiln-keys/*' \\) -type f").stdout.split()
    keyed = [path for path in files if host.file(path).content_string.strip()]
    for path in keyed:
        assert path.startswith("/etc/ssh/hubkiln-keys/"), path
        assert host.file(path).content_string.startswith("# Managed by hubkiln-apply-launch"), path


def test_the_build_boot_left_no_journal(host):
    """The seal vacuumed the journal: this instance's boots are the only ones."""
    boots = host.run("journalctl --list-boots --no-pager -q").stdout.strip().splitlines()
    machine = host.file("/etc/machine-id").content_string.strip()
    assert machine and len(boots) >= 1
    assert host.run(f"ls /var/log/journal | grep -v '^{machine}$'").stdout.split() == []


def test_no_pip_caches(host):
    assert host.run("ls -d /root/.cache/pip /root/.cache/uv 2>/dev/null").stdout == ""


def test_machine_id_and_host_keys_are_this_instances(host):
    """Made at first boot: the image shipped neither (two instances differ, see test_secrets)."""
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32
    assert host.run("ls /etc/ssh/ssh_host_*_key").stdout.split()
