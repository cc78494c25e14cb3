"""The image's settings contract itself (provision/files/hub/settings.schema.yaml) and its
reader hubkiln_schema: a valid, documented, closed schema; strict YAML; the defaults."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from hubkiln.config import guest

rules = guest.schema()


def nodes(node, root, path=""):
    """(path, node) of every keyword-bearing schema below `node`, following $refs once."""
    node = rules.resolve(node, root)
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from nodes(child, root, f"{path}.{key}" if path else key)
    for keyword in ("items", "additionalProperties", "propertyNames"):
        if isinstance(node.get(keyword), dict):
            yield from nodes(node[keyword], root, f"{path}[{keyword}]")


DOCUMENTS = {name: list(nodes(rules.definition(name), rules.schema()))
             for name in ("hub", "launch")}


def test_the_contract_is_valid_json_schema():
    Draft202012Validator.check_schema(rules.schema())


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_key_is_described_and_every_mapping_closed(name):
    for path, node in DOCUMENTS[name]:
        if node.get("type") == "object" or "object" in node.get("type", []):
            assert node.get("additionalProperties") is not None, f"{name}: {path} is open"
    for key, child in rules.definition(name)["properties"].items():
        for path, node in nodes(child, rules.schema(), key):
            if path.endswith("]"):
                continue
            assert node.get("description", "").strip(), f"{name}: {path} has no description"


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_pattern_has_a_readable_error(name):
    for path, node in DOCUMENTS[name]:
        if "pattern" in node:
            assert node.get("x-error"), f"{name}: {path} has a pattern but no x-error"


def test_the_hubs_defaults():
    assert rules.defaults("hub") == {
        "authenticator": "firstuse", "admins": [], "users": [],
        "limits": {"memory": "2G", "cpu": 1, "tasks": 512, "disk": "2G"},
        "idle_culling": {"enabled": True, "timeout_minutes": 60}, "default_ui": "lab",
        "content": {"delivery": "copy"}, "kernel_display_name": "Python 3",
        "tls": {"mode": "auto", "acme_email": None}, "domain": None, "oauth": None,
        "admin_password_hashes": {}, "enrolment_codes": True, "enrolment_code_hashes": {},
        "class_schedule": None}


def test_defaults_fill_only_what_is_left_out():
    hub = rules.definition("hub")
    filled = rules.fill_defaults({"limits": {"memory": "1G"}, "tls": "nonsense"}, hub,
                                 rules.schema())
    assert filled["limits"] == {"memory": "1G", "cpu": 1, "tasks": 512, "disk": "2G"}
    assert filled["tls"] == "nonsense"  # the check reports it
    schedule = {"sessions": [{"days": ["mon"], "start": "09:00", "minutes": 5}]}
    launch = rules.fill_defaults({"class_schedule": schedule}, rules.definition("launch"),
                                 rules.schema())
    assert launch["class_schedule"] == {**schedule, "timezone": None, "prestart_minutes": 10,
                                        "memory_reserve": "1G"}


@pytest.mark.parametrize(("text", "expected"), [
    ("2G", 2 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), ("64K", 64 << 10), ("1T", 1 << 40)])
def test_sizes(text, expected):
    assert rules.parse_size(text) == expected


@pytest.mark.parametrize("text", ["2", "2g", "G", "1.G", "2GB", "-1G", " 2G", "2G\n"])
def test_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        rules.parse_size(text)
    assert rules.check({"limits": {"memory": text}}, "hub")


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\nb:\n  c: 2\n  c: 3\n", "f.yaml: line 4: b.c: is set twice (lines 3 and 4)"),
    ("yes: 1\n", "f.yaml: line 1: yes: the key yes is not text"),
    ("1: x\n", "f.yaml: line 1: 1: the key 1 is not text"),
    ("base: &b {a: 1}\nhub:\n  <<: *b\n", "f.yaml: line 3: hub: merge keys (<<) are not"),
    ("a: [1\n", "f.yaml: line 2, column 1: YAML syntax error"),
    ("a: \x07\n", "f.yaml: line 1: YAML syntax error: the character #x0007 is not allowed"),
    ("a: 1\n---\nb: 2\n", "f.yaml: line 2, column 1: YAML syntax error"),
])
def test_yaml_is_read_strictly_with_located_errors(text, expected):
    with pytest.raises(rules.YamlError) as info:
        rules.read_yaml(text, "f.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_plain_yaml_reads_as_pyyaml_reads_it():
    assert rules.read_yaml("a: [1, 'x']\nb: {c: null}\n", "f") == {"a": [1, "x"], "b": {"c": None}}
    assert rules.read_yaml("", "f") is None
    assert rules.read_yaml("# nothing\n", "f") is None


def test_secrets_never_appear_in_messages():
    problems = rules.check({"oauth": {"client_id": "id", "client_secret": 12345}}, "launch")
    assert problems == [(("oauth", "client_secret"),
                         "(value hidden) is a whole number, expected a string"
                         + rules.YAML_QUOTES)]
    problems = rules.check({"tls": {"certificate": "hunter2", "key": "hunter2"}}, "launch")
    assert [path for path, _ in problems] == [("tls", "certificate"), ("tls", "key")]
    assert not any("hunter2" in message for _, message in problems)
