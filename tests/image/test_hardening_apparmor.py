"""AppArmor is enabled with profiles loaded (HARDENING.md "packages")."""

from __future__ import annotations

import pytest

#: Proven in the VM only (AppArmor needs the image's own kernel): see hubkiln/imagetest.py, engines.
pytestmark = pytest.mark.needs("kernel")



def test_apparmor_is_enabled(host, hardening, journal):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    assert host.service("apparmor").is_enabled, journal("apparmor.service")


def test_apparmor_has_profiles_loaded(host, hardening, journal):
    with host.sudo():
        result = host.run("aa-status --profiled")
    assert result.rc == 0 and int(result.stdout.strip() or 0) > 0, (
        result.stdout + result.stderr + journal("apparmor.service"))
