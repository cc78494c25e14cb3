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


def test_each_admin_has_an_ssh_account_with_sudo_and_the_keys(host, launched, given_settings):
    """NAME-admin: sudo and exactly the launch's keys, in a root-owned file."""
    from hubkiln.config.guest import settings as guest_settings

    keys = launched["ssh_authorized_keys"]
    for name in given_settings["admins"]:
        operator = guest_settings().operator_name(name)
        user = host.user(operator)
        assert user.exists, f"admin {name} has no SSH account {operator}"
        assert {"sudo", "hubkiln-admins"} <= set(user.groups)
        assert "hubkiln-students" not in user.groups
        authorized = host.file(f"/etc/ssh/hubkiln-keys/{operator}")
        assert (authorized.user, authorized.group, authorized.mode) == ("root", "root", 0o644)
        listed = [line for line in authorized.content_string.splitlines()
                  if line and not line.startswith("#")]
        assert listed == [" ".join(key.split()) for key in keys]
        assert not host.file(f"{user.home}/.ssh/authorized_keys").exists


def test_no_hub_account_has_sudo_or_ssh(host, given_settings):
    """The accounts the hub's servers run as (admins' included) are in neither group, and
    have no key file."""
    privileged = set()
    for group in ("sudo", "hubkiln-admins"):
        privileged |= set(host.group(group).members) if host.group(group).exists else set()
    hub_accounts = set(given_settings["users"]) | set(given_settings["admins"])
    assert not privileged & hub_accounts, privileged & hub_accounts
    for name in hub_accounts:
        assert not host.file(f"/etc/ssh/hubkiln-keys/{name}").exists


def test_the_hub_holds_hashes_only(host, launched, credentials):
    """The issued secrets never reach the image: only their hashes."""
    dropin = host.file("/etc/hubkiln/hub.d/50-launch.yaml").content_string
    launch_file = host.file("/etc/hubkiln/launch.yaml").content_string
    secrets = [*credentials.admin_passwords.values(), *credentials.enrolment_codes.values()]
    if not secrets:
        pytest.skip("no secrets were issued with these launch settings")
    for secret in secrets:
        assert secret not in dropin and secret not in launch_file
    assert dropin.count("pbkdf2-sha256$") == len(secrets)


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
    for key in ("users[0]", "admins", "surprise"):
        assert f"bad-launch.yaml: {key}:" in result.stderr, result.stderr
    assert host.run("md5sum /etc/hubkiln/hub.d/50-launch.yaml").stdout == before
