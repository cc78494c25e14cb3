"""Accounts and sudo (HARDENING.md "sudo and accounts")."""

from __future__ import annotations

from typing import Any

import pytest

LOGIN_SHELLS_ALLOWED_BELOW_UID_MIN = {"root"}



@pytest.fixture(scope="module")
def passwd(host: Any, hardening: dict[str, Any]) -> list[list[str]]:
    return [line.split(":") for line in host.file("/etc/passwd").content_string.splitlines()]


def test_root_is_the_only_uid_0(passwd):
    assert [entry[0] for entry in passwd if entry[2] == "0"] == ["root"]


def test_no_account_has_an_empty_password(host, hardening):
    with host.sudo():
        shadow = host.file("/etc/shadow").content_string
    assert [line.split(":")[0] for line in shadow.splitlines() if line.split(":")[1] == ""] == []


def test_root_password_is_locked(host, hardening):
    with host.sudo():
        assert host.run("passwd -S root").stdout.split()[1] == "L"


def test_system_accounts_cannot_log_in(passwd):
    shells = {e[0]: e[6] for e in passwd
              if int(e[2]) < 1000 and e[0] not in LOGIN_SHELLS_ALLOWED_BELOW_UID_MIN}
    bad = {name: shell for name, shell in shells.items()
           if not shell.endswith(("/nologin", "/false"))}
    assert bad == {}


def test_home_directories_are_private_and_owned(host, passwd):
    problems = []
    for name, _, uid, _, _, home, _ in passwd:
        if int(uid) < 1000 or int(uid) == 65534 or not host.file(home).is_directory:
            continue
        entry = host.file(home)
        if entry.user != name or entry.mode & 0o027:
            problems.append(f"{home}: {entry.user} {oct(entry.mode)}")
    assert problems == []


@pytest.mark.parametrize("default", ["use_pty", 'logfile="/var/log/sudo.log"'])
def test_sudo_defaults(host, hardening, default):
    with host.sudo():
        rules = host.run("cat /etc/sudoers /etc/sudoers.d/*").stdout
    assert any(line.strip() == f"Defaults {default}" for line in rules.splitlines())


def test_sudo_logs_to_its_file(host, hardening):
    with host.sudo():
        host.run("true")
        assert host.file("/var/log/sudo.log").exists


def test_login_umask_is_027(host, hardening):
    umask = [line.split() for line in host.file("/etc/login.defs").content_string.splitlines()
             if line.startswith("UMASK")]
    assert umask == [["UMASK", "027"]]


def test_students_cannot_use_ssh_or_sudo(host, hardening):
    with host.sudo():
        sshd = host.run("sshd -T").stdout
        sudoers = host.run("cat /etc/sudoers /etc/sudoers.d/*").stdout
    assert "allowgroups hubkiln-admins" in sshd and "denygroups hubkiln-students" in sshd
    assert "hubkiln-students" not in sudoers
