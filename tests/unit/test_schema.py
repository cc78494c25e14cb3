"""The schema itself: valid, documented, closed; defaults and the maximal fixture agree with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from hubkiln.config import guest
from hubkiln.config.profile import load_profile, load_schema
from hubkiln.paths import PROFILES_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def walk(node: dict[str, Any], path: str = ""):
    """Yield (dotted path, schema node) for every key the schema defines, following the
    $refs into the image's settings contract."""
    root = load_schema()
    for key, child in guest.schema().resolve(node, root).get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        child = guest.schema().resolve(child, root)
        yield here, child
        yield from walk(child, here)
        items = guest.schema().resolve(child.get("items", {}), root)
        if "properties" in items:
            yield from walk(items, f"{here}[]")


def keys_set(data: Any, path: str = ""):
    """Yield the dotted path of every key set in a YAML document (lists as `[]`)."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else key
            yield here
            yield from keys_set(value, here)
    elif isinstance(data, list):
        for item in data:
            yield from keys_set(item, f"{path}[]")


SCHEMA_KEYS = dict(walk(load_schema()))


def test_schema_is_valid_json_schema():
    Draft202012Validator.check_schema(load_schema())


@pytest.mark.parametrize("path", sorted(SCHEMA_KEYS))
def test_every_key_is_described(path):
    assert SCHEMA_KEYS[path].get("description", "").strip(), f"{path} has no description"


OBJECTS = {p: n for p, n in [("(top)", load_schema()), *SCHEMA_KEYS.items()]
           if "properties" in n}
OBJECTS.update({f"{p}[]": guest.schema().resolve(n["items"], load_schema())
                for p, n in SCHEMA_KEYS.items()
                if "properties" in guest.schema().resolve(n.get("items", {}), load_schema())})


@pytest.mark.parametrize("path", sorted(OBJECTS))
def test_every_mapping_rejects_unknown_keys(path):
    assert OBJECTS[path].get("additionalProperties") is False


@pytest.mark.parametrize("path", sorted(
    p for p, n in SCHEMA_KEYS.items()
    if "pattern" in n or "pattern" in guest.schema().resolve(n.get("items", {}), load_schema())))
def test_every_pattern_has_a_readable_error(path):
    node = SCHEMA_KEYS[path]
    node = node if "pattern" in node else guest.schema().resolve(node["items"], load_schema())
    assert node.get("x-error"), f"{path} has a pattern but no x-error message"


def test_maximal_fixture_sets_every_key():
    raw = yaml.safe_load((FIXTURES / "maximal.yaml").read_text())
    missing = set(SCHEMA_KEYS) - set(keys_set(raw))
    assert not missing, f"maximal.yaml does not set: {sorted(missing)}"


def test_maximal_fixture_is_valid():
    profile = load_profile(FIXTURES / "maximal.yaml")
    assert profile["outputs"]["cloud_builders"] == ["amazon-ebs", "googlecompute", "azure-arm"]
    assert profile["content"]["folders"][0]["name"] == "lecture-notes"


def test_defaults_set_every_required_key():
    """After merging, every required key must be present: the defaults file or the
    settings contract's defaults (for the hub's keys) provide them."""
    defaults = yaml.safe_load((PROFILES_DIR / "defaults.yaml").read_text())
    filled = guest.schema().fill_defaults(defaults, load_schema(), load_schema())
    present = set(keys_set(filled))
    mappings = [("", load_schema())] + [(p, n) for p, n in SCHEMA_KEYS.items()
                                        if "properties" in n and "[]" not in p]
    required = {f"{p}.{k}" if p else k for p, n in mappings for k in n.get("required", [])}
    assert required - present == set()
    # Each default lives in one place: no key of the defaults file has a contract default.
    contract = {p for p, n in SCHEMA_KEYS.items() if "default" in n}
    assert contract & set(keys_set(defaults)) == set()
    assert {"hub.limits.memory", "tls.mode", "environment.kernel_display_name"} <= contract
