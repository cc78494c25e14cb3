"""The `class_schedule` launch setting on both sides: the build (hubkiln.config.launch, the
schema) and the image (hubkiln-apply-launch, hubkiln_hub) accept and refuse the same
schedules, naming the same key, and the schedule reaches the hub's settings intact."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from hubkiln.config import guest
from hubkiln.config.guest import load_module
from hubkiln.config.launch import (
    LaunchError,
    check_launch_for_profile,
    load_launch,
    load_launch_schema,
)
from hubkiln.config.profile import load_profile
from hubkiln.deliver.seed import render_user_data, summarize
from hubkiln.stages.provision import hub_settings, render_hub_settings

PROJECT = Path(__file__).resolve().parents[2]
hub = load_module("hubkiln_hub", PROJECT / "provision" / "files" / "hub" / "hubkiln_hub.py")
apply_launch = load_module("hubkiln_apply_launch",
                           PROJECT / "provision" / "files" / "bin" / "hubkiln-apply-launch")

SCHEDULE = """\
    users: [alice, bob]
    class_schedule:
      timezone: Europe/Berlin
      sessions:
        - days: [mon, wed]
          start: "09:00"
          minutes: 90
        - {days: [fri], start: "10:30", minutes: 45}
    """


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "launch.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def host_problems(path: Path) -> list[str]:
    with pytest.raises(LaunchError) as info:
        load_launch(path, openssl=None)
    return info.value.problems


def guest_problems(path: Path) -> list[str]:
    with pytest.raises(apply_launch.LaunchError) as info:
        apply_launch.read_launch(path)
    return str(info.value).splitlines()


# ------------------------------------------------------------ the same schedule, both sides


def test_a_schedule_loads_with_its_defaults_in_order(in_tmp):
    launch = load_launch(write(in_tmp, SCHEDULE), openssl=None)
    schedule = launch["class_schedule"]
    assert list(schedule) == ["timezone", "prestart_minutes", "memory_reserve", "sessions"]
    assert schedule["prestart_minutes"] == 10 and schedule["memory_reserve"] == "1G"
    assert schedule["sessions"][1] == {"days": ["fri"], "start": "10:30", "minutes": 45}


def test_the_schedule_reaches_the_hub_settings_intact(in_tmp):
    """The document in the user-data (where an unquoted 10:30 would become 630) passes
    the image's check, and hubkiln-apply-launch's drop-in merges into the settings."""
    launch = load_launch(write(in_tmp, SCHEDULE), openssl=None)
    (entry,) = yaml.safe_load(render_user_data(launch))["write_files"]
    received = write(in_tmp, entry["content"], "received.yaml")
    document = apply_launch.read_launch(received)
    assert document["class_schedule"] == launch["class_schedule"]
    hub_d = in_tmp / "hub.d"
    hub_d.mkdir()
    profile = hub_settings(load_profile("ci"))
    (hub_d / "00-profile.yaml").write_text(render_hub_settings(load_profile("ci")))
    (hub_d / "50-launch.yaml").write_text(yaml.safe_dump(apply_launch.launch_dropin(document)))
    settings = hub.load_settings(hub_d)
    assert settings["class_schedule"] == launch["class_schedule"]
    # What tests/image/conftest.py's given_settings works out on the host.
    assert settings == hub.merge(hub.merge(hub.DEFAULTS, profile),
                                 apply_launch.launch_dropin(launch.data))


def test_without_a_schedule_the_settings_have_none(in_tmp):
    launch = load_launch(write(in_tmp, "users: [alice]\n"), openssl=None)
    assert launch["class_schedule"] is None
    assert "class_schedule" not in apply_launch.launch_dropin(launch.data)
    assert hub.merge(hub.DEFAULTS, apply_launch.launch_dropin(launch.data))[
        "class_schedule"] is None


@pytest.mark.parametrize(("schedule", "key", "words"), [
    ("{timezone: Europe/Berln, sessions: [{days: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.timezone", "did you mean Europe/Berlin?"),
    ("{timezone: Mars/Olympus, sessions: [{days: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.timezone", "not a known time zone"),
    ("{prestart_minutes: 0, sessions: [{days: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.prestart_minutes", "0"),
    ("{prestart_minutes: 121, sessions: [{days: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.prestart_minutes", "120"),
    ("{memory_reserve: lots, sessions: [{days: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.memory_reserve", "is not a size like 2G or 512M"),
    ("{sessions: []}", "class_schedule.sessions", "at least 1"),
    ("{prestart_minutes: 5}", "class_schedule.sessions", "is missing"),
    ("{sessions: [{days: [mon], start: 10:30, minutes: 5}]}",
     "class_schedule.sessions[0].start", "put the time in quotes"),
    ("{sessions: [{days: [mon], start: '9:00', minutes: 5}]}",
     "class_schedule.sessions[0].start", "is not a time like \"09:00\""),
    ("{sessions: [{days: [mon], start: '24:00', minutes: 5}]}",
     "class_schedule.sessions[0].start", "is not a time like \"09:00\""),
    ("{sessions: [{days: [mon, funday], start: '09:00', minutes: 5}]}",
     "class_schedule.sessions[0].days", "is not one of: mon, tue"),
    ("{sessions: [{days: [], start: '09:00', minutes: 5}]}",
     "class_schedule.sessions[0].days", "at least 1"),
    ("{sessions: [{days: [mon], start: '09:00', minutes: 721}]}",
     "class_schedule.sessions[0].minutes", "720"),
    ("{sessions: [{days: [mon], start: '09:00'}]}",
     "class_schedule.sessions[0].minutes", "is missing"),
    ("{sessions: [{day: [mon], start: '09:00', minutes: 5}]}",
     "class_schedule.sessions[0].day", "unknown key"),
    ("mondays", "class_schedule", "mapping"),
])
def test_a_bad_schedule_is_refused_by_both_naming_the_key(in_tmp, schedule, key, words):
    path = write(in_tmp, f"users: [alice]\nclass_schedule: {schedule}\n")
    for side, problems, prefix in (("build", host_problems(path), "launch.yaml: "),
                                   ("image", guest_problems(path), f"{path}: ")):
        named = [p for p in problems if p.startswith(prefix + key)]
        assert named and any(words in p for p in named), f"{side}: {problems}"


def test_the_unquoted_time_hint_is_one_rule(in_tmp):
    path = write(in_tmp, "users: [a]\nclass_schedule: {sessions: [{days: [mon], start: 10:30, "
                 "minutes: 5}]}\n")
    (host,) = host_problems(path)
    assert host.endswith("630 is not a time like \"09:00\": put the time in quotes (YAML reads "
                         "an unquoted 10:30 as the number 630)")
    assert host.split(": ", 2)[2] in "\n".join(guest_problems(path))


# ------------------------------------------------------------ pre-start and the idle culler


def with_culling(profile, **culling):
    hub_section = {**profile["hub"], "idle_culling": {**profile["hub"]["idle_culling"],
                                                      **culling}}
    return dataclasses.replace(profile, data={**profile.data, "hub": hub_section})


def test_the_culler_must_leave_pre_started_servers_for_late_students(in_tmp):
    launch = load_launch(write(in_tmp, SCHEDULE), openssl=None)
    ci = load_profile("ci")
    assert check_launch_for_profile(launch, ci) == []  # 60 idle minutes, 10 ahead
    assert check_launch_for_profile(launch, with_culling(ci, timeout_minutes=25)) == []
    (problem,) = check_launch_for_profile(launch, with_culling(ci, timeout_minutes=20))
    assert problem.startswith("launch.yaml: class_schedule.prestart_minutes: 10 would let the "
                              "idle culler (after 20 idle minutes")
    assert "10 minute(s) into its class" in problem and "at most 5 minutes" in problem
    assert check_launch_for_profile(launch, with_culling(ci, timeout_minutes=5,
                                                         enabled=False)) == []
    # The image refuses the same settings, with the same words (one rule).
    hub_d = in_tmp / "hub.d"
    hub_d.mkdir()
    (hub_d / "00-profile.yaml").write_text("idle_culling: {enabled: true, timeout_minutes: 20}\n")
    (hub_d / "50-launch.yaml").write_text(yaml.safe_dump(apply_launch.launch_dropin(launch.data)))
    with pytest.raises(hub.SettingsError) as error:
        hub.load_settings(hub_d)
    assert problem.split("prestart_minutes: ", 1)[1].rsplit(" (the profile", 1)[0] in str(
        error.value)


def test_a_culler_shorter_than_the_lead_says_to_rebuild():
    problem = hub.prestart_culling_problem({"prestart_minutes": 30, "sessions": []},
                                           {"enabled": True, "timeout_minutes": 10})
    assert "before its class starts" in problem
    assert "hub.idle_culling.timeout_minutes of at least 45" in problem


# ------------------------------------------------------------ the schema and the guest's table


def schema_keys(node: dict, root: dict, path: str = "") -> set[str]:
    """Every key path a schema accepts, following its $refs."""
    rules = guest.schema()
    keys = set()
    for key, child in rules.resolve(node, root).get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        child = rules.resolve(child, root)
        keys |= {here} | schema_keys(child, root, here) \
            | schema_keys(child.get("items", {}), root, here + "[]")
    return keys


def test_the_launch_file_is_the_images_launch_settings_and_the_tls_files():
    """The build's launch-file schema is derived from the image's: the same keys, plus the
    PEM files the build reads in (the image receives their text)."""
    rules = guest.schema()
    read_in = {"tls.certificate_file", "tls.key_file"}
    host = load_launch_schema()
    assert schema_keys(host, host) - read_in == schema_keys(rules.definition("launch"),
                                                           rules.schema())
    assert "class_schedule.sessions[].start" in schema_keys(host, host)


def test_the_summaries_say_whether_servers_are_pre_started(in_tmp):
    launch = load_launch(write(in_tmp, SCHEDULE), openssl=None)
    assert "pre-start before classes: 10 minutes before each of 2 session(s) a week " \
        "(Europe/Berlin), down to 1G of free memory" in summarize(launch)
    settings = hub.merge(hub.DEFAULTS, apply_launch.launch_dropin(launch.data))
    assert apply_launch.prestart_description(settings) == (
        "10 minutes before each of 2 session(s) a week")
    assert apply_launch.prestart_description(hub.DEFAULTS) == "off"
