"""Per-instance secrets exist, made at first boot, private, and were never baked."""

from __future__ import annotations

import pytest

SECRETS = "/var/lib/hubkiln/secrets"


@pytest.mark.parametrize("path", [f"{SECRETS}/jupyterhub_cookie_secret",
                                  f"{SECRETS}/proxy-auth-token.env"])
def test_secret_is_private_to_root(host, journal, path):
    secret = host.file(path)
    assert secret.is_file, f"{path} is missing" + journal("hubkiln-firstboot.service")
    assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)
    assert secret.size > 32


def test_secrets_differ_per_boot_of_the_image_not_per_build(host):
    """Made at first boot: newer than the settings baked into the image."""
    born = host.run(f"stat -c %Y {SECRETS}/jupyterhub_cookie_secret").stdout.strip()
    baked = host.run("stat -c %Y /etc/hubkiln/hub.d/00-profile.yaml").stdout.strip()
    assert int(born) > int(baked)


def test_self_signed_key_is_readable_by_the_front_only(host):
    key = host.file("/etc/hubkiln/tls/self-signed.key")
    assert key.is_file
    assert (key.user, key.group, key.mode) == ("root", "caddy", 0o640)
    tls_dir = host.file("/etc/hubkiln/tls")
    assert (tls_dir.user, tls_dir.group, tls_dir.mode) == ("root", "caddy", 0o750)


def test_self_signed_certificate_is_valid_now(host):
    result = host.run("openssl x509 -noout -checkend 86400 -in /etc/hubkiln/tls/self-signed.crt")
    assert result.rc == 0, result.stdout + result.stderr


def test_hub_database_is_private(host):
    state = host.file("/var/lib/hubkiln/hub")
    assert (state.user, state.mode) == ("root", 0o700)
