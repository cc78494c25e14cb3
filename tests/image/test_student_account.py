"""A student's Unix account: private home, no SSH, no sudo, and the course material."""

from __future__ import annotations

import pytest


def test_student_account_is_a_plain_hub_account(host, student):
    user = host.user(student.name)
    assert user.exists
    assert "hubkiln-students" in user.groups
    assert not {"sudo", "hubkiln-admins", "adm"} & set(user.groups)
    assert host.run(f"passwd -S {student.name}").stdout.split()[1] == "L"


def test_student_home_is_private(host, student):
    home = host.file(host.user(student.name).home)
    assert (home.user, home.mode) == (student.name, 0o700)


def test_student_has_no_ssh(host, student):
    home = host.user(student.name).home
    assert not host.file(f"{home}/.ssh/authorized_keys").exists
    denied = host.run("sshd -T -C user=x,host=x,addr=127.0.0.1 | grep -i ^denygroups").stdout
    assert "hubkiln-students" in denied.split()


def test_student_cannot_use_sudo(host, student):
    result = host.run(f"sudo -l -U {student.name}")
    assert "is not allowed to run sudo" in result.stdout, result.stdout


@pytest.fixture
def content_folders(host):
    folders = host.run("find /opt/hubkiln/content -mindepth 1 -maxdepth 1 -type d -printf '%f\\n'")
    names = sorted(folders.stdout.split())
    if not names:
        pytest.skip("the image has no course material (content.folders is empty)")
    return names


def test_content_is_read_only_for_everyone(host, content_folders):
    writable = host.run("find /opt/hubkiln/content \\( ! -user root -o -perm /022 \\) -print")
    assert writable.stdout == ""


def test_content_was_delivered_at_first_login(host, student, settings, content_folders):
    home = host.user(student.name).home
    for name in content_folders:
        delivered = host.file(f"{home}/{name}")
        if settings["content"]["delivery"] == "copy":
            assert delivered.is_directory and not delivered.is_symlink, name
            assert delivered.user == student.name
        else:
            assert delivered.is_symlink and delivered.linked_to == f"/opt/hubkiln/content/{name}"
