"""hubkiln-apply-launch applied /etc/hubkiln/launch.yaml: admins, roster, keys, drop-in."""

from __future__ import annotations

import pytest


@pytest.fixture
def launched(launch):
    if not launch:
        pytest.skip("the guest was booted without /etc/hubkiln/launch.yaml")
    return launch


def test_launch_file_is_private(host, launched):
    launch_file = host.file("/etc/hubkiln/launch.yaml")
    assert (launch_file.user, launch_file.mode) == ("root", 0o600)


def test_launch_dropin_is_private_and_matches(host, launched, settings):
    dropin = host.file("/etc/hubkiln/hub.d/50-launch.yaml")
    assert (dropin.user, dropin.mode) == ("root", 0o600)
    assert set(settings["users"]) == set(launched.get("users") or [])
    assert set(launched.get("admins") or []) <= set(settings["admins"])


def test_each_admin_has_an_account_with_sudo_and_the_keys(host, launched, settings):
    keys = launched.get("ssh_authorized_keys") or []
    for name in settings["admins"]:
        user = host.user(name)
        assert user.exists, f"admin {name} has no account"
        assert {"sudo", "hubkiln-admins"} <= set(user.groups)
        assert "hubkiln-students" not in user.groups
        authorized = host.file(f"{user.home}/.ssh/authorized_keys")
        assert (authorized.user, authorized.mode) == (name, 0o600)
        for key in keys:
            assert key.strip() in authorized.content_string


def test_apply_launch_is_idempotent(host, launched):
    before = host.run("md5sum /etc/hubkiln/hub.d/50-launch.yaml /etc/hubkiln/front/Caddyfile")
    result = host.run("hubkiln-apply-launch --boot")
    assert result.rc == 0, result.stdout + result.stderr
    after = host.run("md5sum /etc/hubkiln/hub.d/50-launch.yaml /etc/hubkiln/front/Caddyfile")
    assert before.stdout == after.stdout
    assert "creating" not in result.stdout


def test_bad_launch_file_is_refused_with_the_key_named(host, launched):
    """A broken copy (not the real file) must be refused, naming the key, changing nothing."""
    host.run("install -m 0600 /dev/null /run/hubkiln-bad-launch.yaml")
    host.run("printf 'users: [Alice]\\nadmins: teacher\\nsurprise: 1\\n' "
             ">/run/hubkiln-bad-launch.yaml")
    before = host.run("md5sum /etc/hubkiln/hub.d/50-launch.yaml").stdout
    result = host.run("hubkiln-apply-launch --boot --file /run/hubkiln-bad-launch.yaml")
    host.run("rm -f /run/hubkiln-bad-launch.yaml")
    assert result.rc == 2
    for key in ("users", "admins", "surprise"):
        assert f"{key}:" in result.stderr, result.stderr
    assert host.run("md5sum /etc/hubkiln/hub.d/50-launch.yaml").stdout == before
