"""Loading, merging and validating profiles: good ones load, bad ones name file and key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from hubkiln.config.profile import format_keypath, load_profile, parse_size
from hubkiln.errors import ProfileError
from hubkiln.paths import PROFILES_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return info.value.problems


@pytest.mark.parametrize("name", ["optimization", "ci", "defaults"])
def test_bundled_profiles_are_valid(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.files[0] == (PROFILES_DIR / "defaults.yaml").resolve()


def test_optimization_profile_is_the_course():
    profile = load_profile("optimization")
    packages = {re.split(r"[=<>!~\[ ]", spec)[0] for spec in
                profile["environment"]["python_packages"]}
    assert packages == {"numpy", "scipy", "pandas", "matplotlib", "networkx", "pulp",
                        "ortools", "highspy", "cvxpy", "ipywidgets"}
    hub = profile["hub"]
    assert hub["default_ui"] == "lab"
    assert parse_size(hub["limits"]["memory"]) == 2 << 30
    assert hub["limits"]["cpu"] == 1
    assert hub["idle_culling"] == {"enabled": True, "timeout_minutes": 60}
    assert hub["authenticator"] == "firstuse"
    assert profile["base"]["os"] == "ubuntu-24.04"


def test_ci_profile_is_small():
    ci = load_profile("ci")
    heavy = {"numpy", "scipy", "pandas", "ortools", "cvxpy", "matplotlib"}
    assert not heavy & set(ci["environment"]["python_packages"])


def test_profile_overrides_and_merges_defaults(tmp_path):
    path = write(tmp_path, "course.yaml", """\
        name: course
        description: d
        hub:
          limits:
            memory: 4G
    """)
    profile = load_profile(path)
    assert profile["hub"]["limits"] == {"memory": "4G", "cpu": 1, "tasks": 512, "disk": "2G"}
    assert profile["base"]["os"] == "ubuntu-24.04"


def test_content_paths_resolve_against_the_declaring_file(tmp_path):
    (tmp_path / "week1").mkdir()
    path = write(tmp_path, "course.yaml", """\
        name: course
        description: d
        content:
          folders: [{source: week1}]
    """)
    folder = load_profile(path)["content"]["folders"][0]
    assert folder == {"source": str((tmp_path / "week1").resolve()), "name": "week1"}


def test_extends_chain_of_three(tmp_path):
    write(tmp_path, "base.yaml", """\
        name: base
        description: base course
        hub: {default_ui: notebook}
    """)
    path = write(tmp_path, "child.yaml", "extends: base\nname: child\n")
    profile = load_profile(path)
    assert profile["hub"]["default_ui"] == "notebook"
    assert profile["description"] == "base course"
    assert [p.name for p in profile.files] == ["defaults.yaml", "base.yaml", "child.yaml"]


BAD_INPUTS = {
    "unknown key suggests the closest": (
        "name: c\ndescription: d\nhub:\n  limitz: {}\n",
        "c.yaml: hub.limitz: unknown key 'limitz' (did you mean 'limits'?)",
    ),
    "wrong type": (
        "name: c\ndescription: d\nhub:\n  limits:\n    cpu: two\n",
        "c.yaml: hub.limits.cpu: 'two' is a string, expected a number",
    ),
    "negative cpu": (
        "name: c\ndescription: d\nhub:\n  limits:\n    cpu: -1\n",
        "c.yaml: hub.limits.cpu: -1 must be greater than 0",
    ),
    "memory that is not a size": (
        "name: c\ndescription: d\nhub:\n  limits:\n    memory: lots\n",
        "c.yaml: hub.limits.memory: 'lots' is not a size like 2G",
    ),
    "unknown os": (
        "name: c\ndescription: d\nbase:\n  os: centos-7\n",
        "c.yaml: base.os: 'centos-7' is not one of: ubuntu-24.04, debian-12",
    ),
    "unknown authenticator": (
        "name: c\ndescription: d\nhub:\n  authenticator: ldap\n",
        "c.yaml: hub.authenticator: 'ldap' is not one of: firstuse, native, github",
    ),
    "empty file": ("", "c.yaml: the file is empty"),
    "yaml syntax error gives the line": (
        "name: c\ndescription: d\nhub:\n  limits: [1, 2\n",
        "c.yaml: line 5, column 1: YAML syntax error",
    ),
    "missing content folder": (
        "name: c\ndescription: d\ncontent:\n  folders: [{source: nowhere}]\n",
        "c.yaml: content.folders[0].source: 'nowhere': no such folder",
    ),
    "extends itself": (
        "extends: c\nname: c\ndescription: d\n",
        "c.yaml: extends: 'c' is this profile itself",
    ),
    "extends a missing profile": (
        "extends: nothing\nname: c\ndescription: d\n",
        "c.yaml: extends: 'nothing' not found",
    ),
    "name with a trailing newline": (
        'name: "c\\n"\ndescription: d\n',
        "c.yaml: name: 'c\\n' is not a short name",
    ),
    "top level is a list": ("- name: c\n", "c.yaml: (top level): a list, expected a mapping"),
    "bad package pin": (
        "name: c\ndescription: d\nenvironment:\n  python_packages: ['numpy==']\n",
        "c.yaml: environment.python_packages[0]: 'numpy==' is not a package name",
    ),
    "duplicate output format": (
        "name: c\ndescription: d\noutputs:\n  formats: [qcow2, qcow2]\n",
        "c.yaml: outputs.formats: lists 'qcow2' more than once",
    ),
}


@pytest.mark.parametrize("text,expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_file_and_key(tmp_path, text, expected):
    problems = problems_of(write(tmp_path, "c.yaml", text))
    assert any(expected in p for p in problems), problems


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "extends: b\nname: a\ndescription: d\n")
    write(tmp_path, "b.yaml", "extends: a\nname: b\ndescription: d\n")
    (problem,) = problems_of(tmp_path / "a.yaml")
    assert "b.yaml: extends: 'a' leads back to a profile already read" in problem


def test_every_error_is_reported_at_once(tmp_path):
    path = write(tmp_path, "c.yaml", """\
        name: Not_Valid
        description: d
        base: {os: centos, disk_size: 8}
        hub: {limits: {cpu: -1, memory: lots}, authenticator: ldap}
        content: {folders: [{source: missing}]}
    """)
    problems = problems_of(path)
    keys = {p.split(": ")[1] for p in problems}
    assert keys == {"name", "base.os", "base.disk_size", "hub.limits.cpu", "hub.limits.memory",
                    "hub.authenticator", "content.folders[0].source"}


def test_error_in_extended_file_names_that_file(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ndescription: d\nhub: {default_ui: classic}\n")
    path = write(tmp_path, "child.yaml", "extends: base\nname: child\n")
    (problem,) = problems_of(path)
    assert problem.endswith("base.yaml: hub.default_ui: 'classic' is not one of: lab, notebook")


@pytest.mark.parametrize("text,size", [("2G", 2 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29),
                                       ("1T", 1 << 40), ("64K", 64 << 10)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_format_keypath():
    assert format_keypath(("content", "folders", 0, "source")) == "content.folders[0].source"
    assert format_keypath(()) == "(top level)"


@pytest.mark.parametrize(("base", "problem"), [
    ({"os": "debian-12", "apt_mirror": "http://127.0.0.1/debian"},
     "base.apt_security_mirror: is needed with base.apt_mirror on debian-12"),
    ({"apt_security_mirror": "http://127.0.0.1/debian-security"},
     "base.apt_security_mirror: is used only with base.apt_mirror"),
])
def test_the_security_mirror_goes_with_the_mirror(tmp_path, base, problem):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "description": "d", "base": base}))
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert any(problem in message for message in error.value.problems), error.value.problems


def test_a_debian_mirror_with_its_security_archive_is_a_profile(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "description": "d", "base": {
        "os": "debian-12", "apt_mirror": "http://127.0.0.1/debian",
        "apt_security_mirror": "http://127.0.0.1/debian-security"}}))
    assert load_profile(path)["base"]["apt_security_mirror"].endswith("/debian-security")
    # Ubuntu's security pocket is in its main archive: a mirror alone will do.
    path.write_text(yaml.safe_dump({"name": "p", "description": "d", "base": {
        "apt_mirror": "http://127.0.0.1/ubuntu"}}))
    assert load_profile(path)["base"]["apt_security_mirror"] is None
