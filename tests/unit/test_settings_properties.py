"""Property tests of the settings contract (hypothesis): mutated and random profiles and
launch files are either accepted, and then valid for the image too, or refused with
located errors (the file, then a key path or a line), never a traceback; nothing is
written for a refused file.

Mutations start from documents that set every key (tests/unit/fixtures/maximal.yaml and
the contract test's maximal launch): a value replaced by another (of any type, or one
of the values that trip people up), a key removed or added, and the YAML text itself
cut short, a line doubled or a character inserted.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubkiln import actions
from hubkiln.config import guest
from hubkiln.config.launch import LaunchError, load_launch
from hubkiln.config.profile import load_profile, load_schema
from hubkiln.deliver.seed import render_user_data
from hubkiln.errors import ProfileError
from hubkiln.stages.provision import render_hub_settings

FIXTURES = Path(__file__).parent / "fixtures"
#: The same examples on every run (a suite must not pass or fail by chance); set
#: HUBKILN_PROPERTY_EXAMPLES to explore that many random ones instead.
EXPLORE = int(os.environ.get("HUBKILN_PROPERTY_EXAMPLES", "0"))
EXAMPLES = settings(max_examples=EXPLORE or 120, derandomize=not EXPLORE, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])

#: Values that trip people up, beside random ones.
TRICKY = ["2G", "1.5G", "lots", "", " ", "0", 0, -1, 1.5, 10 ** 30, True, False, None, "yes",
          "on", 630, "09:00", "25:00", "Europe/Berlin", "Mars/Olympus", "root", "teacher",
          "teacher-admin", "Alice", "a" * 200, "ssh-dss AAAA", "-----BEGIN PRIVATE KEY-----",
          "https://x.example/dir", "http://x", "hub.example.org", "mon", "bob\n", [], {},
          ["mon"], {"a": 1}, "é", "../x", "$2b$12$short"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
values = st.sampled_from(TRICKY) | json_values


def paths_of(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a document (keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_of(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths_of(value, prefix + (index,))
    return found


@st.composite
def mutated(draw, base: dict) -> str:
    """The YAML text of `base` after a few mutations of its values and of its text."""
    data = yaml.safe_load(yaml.safe_dump(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(data)
        if not paths:
            break
        # An index taken modulo: what is drawn does not depend on the document's shape.
        path = paths[draw(st.integers(0, 1 << 16)) % len(paths)]
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        # (copies: a drawn list or mapping of TRICKY must never be changed in place)
        if action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(values))
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = copy.deepcopy(draw(values))
        if not isinstance(data, dict):
            break
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    lines = text.splitlines(keepends=True)
    edit = draw(st.sampled_from(["none", "none", "cut", "double", "insert"]))
    where = draw(st.integers(0, 1 << 16))
    if edit == "cut":
        text = text[:where % (len(text) + 1)]
    elif edit == "double" and lines:
        index = where % len(lines)
        text = "".join(lines[:index + 1] + lines[index:])
    elif edit == "insert":
        where %= len(text) + 1
        text = text[:where] + draw(st.sampled_from(list(":-[]{}'\"#&*!|>%@` \t\n"))) + text[where:]
    return text


LOCATED = re.compile(r"^\S+\.yaml: (line \d+|\(top level\)|[A-Za-z_\[\]0-9.]|\S)")


def assert_located(messages: list[str]) -> None:
    assert messages, "refused without a reason"
    for message in messages:
        assert LOCATED.match(message), f"not located: {message!r}"
        assert "Traceback" not in message


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------ profiles


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory) -> Path:
    """A copy of the fixtures (the maximal profile names files relative to itself)."""
    folder = tmp_path_factory.mktemp("profiles")
    shutil.copytree(FIXTURES, folder, dirs_exist_ok=True)
    return folder


MAXIMAL_PROFILE = yaml.safe_load((FIXTURES / "maximal.yaml").read_text())


def check_profile_text(folder: Path, text: str) -> None:
    path = folder / "mutant.yaml"
    path.write_text(text, encoding="utf-8")
    before = snapshot(folder)
    try:
        profile = load_profile(path)
    except ProfileError as error:
        assert_located(error.problems)
        assert snapshot(folder) == before  # nothing written
        return
    # Accepted: valid against the schema, and the image takes its hub settings.
    schema = load_schema()
    assert guest.schema().check_against(schema, profile.data) == []
    dropin = folder / "hub-settings.yaml"
    dropin.write_text(render_hub_settings(profile))
    assert guest.settings().dropin_problems(dropin) == []


@EXAMPLES
@given(text=mutated(MAXIMAL_PROFILE))
def test_a_mutated_profile_is_accepted_and_valid_or_refused_with_located_errors(
        profile_dir, text):
    check_profile_text(profile_dir, text)


@EXAMPLES
@given(data=st.dictionaries(st.sampled_from(["name", "description", "base", "hub", "tls",
                                             "environment", "content", "extends", "outputs",
                                             "hardening", "zzz"]), values, max_size=6))
def test_a_random_profile_is_accepted_and_valid_or_refused_with_located_errors(
        profile_dir, data):
    check_profile_text(profile_dir, yaml.safe_dump(data))


@EXAMPLES
@given(text=st.text(max_size=80))
def test_any_text_as_a_profile_is_refused_with_a_located_error(profile_dir, text):
    check_profile_text(profile_dir, text)


# ------------------------------------------------------------ launch files


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launch")


@pytest.fixture(scope="module")
def maximal_launch(launch_dir) -> dict:
    from test_settings_contract import maximal_launch as make
    return make(launch_dir)


def check_launch_text(folder: Path, text: str) -> None:
    path = folder / "launch.yaml"
    path.write_text(text, encoding="utf-8")
    seed, user_data = folder / "out" / "seed.iso", folder / "out" / "user-data.yaml"
    before = snapshot(folder)
    try:
        launch = load_launch(path, openssl=None)
    except LaunchError as error:
        assert_located(error.problems)
        with pytest.raises(LaunchError):
            actions.seed(str(path), iso=str(seed), user_data=str(user_data), profile_ref=None)
        assert snapshot(folder) == before  # no seed, no user-data, no credentials
        return
    # Accepted: what the image receives passes the image's own check.
    (entry,) = yaml.safe_load(render_user_data(launch))["write_files"]
    received = guest.schema().read_yaml(entry["content"], "received")
    assert guest.settings().document_problems(received, "launch") == []


@EXAMPLES
@given(data=st.data())
def test_a_mutated_launch_file_is_accepted_and_valid_or_refused_with_located_errors(
        launch_dir, maximal_launch, data):
    check_launch_text(launch_dir, data.draw(mutated(maximal_launch)))


@EXAMPLES
@given(text=st.text(max_size=80))
def test_any_text_as_a_launch_file_is_accepted_or_refused_with_a_located_error(launch_dir,
                                                                               text):
    check_launch_text(launch_dir, text)
