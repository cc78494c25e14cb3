"""AppArmor is enabled with profiles loaded (HARDENING.md "packages")."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.fixture(scope="module")
def hardening(host: Any) -> dict[str, Any]:
    """The hardening settings baked into the image; skips when hardening is off."""
    with host.sudo():
        found = host.file("/etc/hubkiln/hardening.json")
        settings = json.loads(found.content_string) if found.exists else {}
    if not settings.get("enabled"):
        pytest.skip("hardening.enabled is false in this image (or 80-hardening.sh did not run)")
    return settings


def test_apparmor_is_enabled(host, hardening, journal):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    assert host.service("apparmor").is_enabled, journal("apparmor.service")


def test_apparmor_has_profiles_loaded(host, hardening, journal):
    with host.sudo():
        result = host.run("aa-status --profiled")
    assert result.rc == 0 and int(result.stdout.strip() or 0) > 0, (
        result.stdout + result.stderr + journal("apparmor.service"))
