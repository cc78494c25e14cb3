"""Settings variants: what may differ from the image's profile, and the file they put in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubkiln.config.profile import load_profile
from hubkiln.errors import ProfileError
from hubkiln.stages.provision import HUB_SETTINGS_DROPIN, hub_settings
from hubkiln.validation import variants

PROJECT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"extends": str(PROJECT / "profiles/ci.yaml"),
                                    "name": name, **data}))
    return path


def test_the_shipped_native_variant_changes_only_the_login():
    image = load_profile("ci")
    variant = variants.load_variant(image, str(PROJECT / "tests/variants/native.yaml"))
    assert list(variant.files) == [HUB_SETTINGS_DROPIN]
    baked = yaml.safe_load(variant.files[HUB_SETTINGS_DROPIN])
    assert baked == {**hub_settings(image), "authenticator": "native"}


def test_hub_tls_and_delivery_may_differ(tmp_path):
    path = write(tmp_path, "v", {"hub": {"default_ui": "notebook",
                                         "idle_culling": {"timeout_minutes": 5}},
                                 "tls": {"mode": "self-signed"},
                                 "content": {"delivery": "link"}})
    variant = variants.load_variant(load_profile("ci"), str(path))
    settings = yaml.safe_load(variant.files[HUB_SETTINGS_DROPIN])
    assert settings["default_ui"] == "notebook" and settings["content"]["delivery"] == "link"


@pytest.mark.parametrize(("data", "key"), [
    ({"environment": {"python_packages": ["pulp"]}}, "environment.python_packages"),
    ({"environment": {"kernel_display_name": "Other"}}, "environment.kernel_display_name"),
    ({"base": {"os": "debian-12"}}, "base.os"),
    ({"hardening": {"ptrace_scope": 3}}, "hardening.ptrace_scope"),
    ({"content": {"folders": []}}, "content.folders"),
])
def test_a_variant_that_changes_what_is_baked_is_refused(tmp_path, data, key):
    path = write(tmp_path, "baked", data)
    with pytest.raises(ProfileError) as raised:
        variants.load_variant(load_profile("ci"), str(path))
    message = str(raised.value)
    assert f"{path.name}: {key}: differs from the profile 'ci'" in message, message
    assert "build this profile as its own image" in message


def test_differences_are_found_at_any_depth_and_for_added_keys():
    image = {"name": "a", "hub": {"x": 1}, "base": {"os": "u", "size": "4G"}}
    variant = {"name": "b", "hub": {"x": 2}, "base": {"os": "u", "size": "8G", "new": 1}}
    assert variants.baked_differences(image, variant) == [("base", "new"), ("base", "size")]
    assert variants.baked_differences(image, image) == []


def test_a_variant_is_not_booted_in_the_vm():
    from hubkiln import actions
    from hubkiln.errors import HubkilnError

    with pytest.raises(HubkilnError, match="boots in the container only"):
        actions.validate("ci", image="/nonexistent.qcow2", accelerator=None, engine="vm",
                         variant_ref=str(PROJECT / "tests/variants/native.yaml"))
