"""The in-guest logic without a guest: settings rules, launch checks, front config.

Loads provision/files/hub/hubkiln_hub.py and provision/files/bin/hubkiln-apply-launch
as modules; needs PyYAML only (no VM, no root).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[2] / "provision" / "files"


def load(name: str, path: Path):
    """Import `path` as module `name` without writing __pycache__ into provision/ (its
    contents are hashed into the build's cache keys)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


hub = load("hubkiln_hub", FILES / "hub" / "hubkiln_hub.py")
apply_launch = load("hubkiln_apply_launch", FILES / "bin" / "hubkiln-apply-launch")


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def test_dropins_merge_in_lexical_order(tmp_path):
    write(tmp_path, "00-profile.yaml", "admins: [ann]\nlimits: {memory: 2G, cpu: 1}\n"
          "users: [x]\n")
    write(tmp_path, "50-launch.yaml", "admins: [bob]\nlimits: {cpu: 2}\nusers: [alice]\n")
    write(tmp_path, "notyaml.txt", "ignored: true\n")
    settings = hub.load_settings(tmp_path)
    assert settings["admins"] == ["ann", "bob"]  # admins accumulate
    assert settings["users"] == ["alice"]  # other lists replace
    assert settings["limits"] == {"memory": "2G", "cpu": 2, "tasks": 512}  # mappings merge


def test_every_problem_is_reported_with_file_and_key(tmp_path):
    write(tmp_path, "00-profile.yaml", "limits: {memory: lots}\ndefault_ui: vim\n")
    write(tmp_path, "10-typo.yaml", "idle_culing: {enabled: false}\n")
    write(tmp_path, "20-broken.yaml", "users: [alice\n")
    with pytest.raises(hub.SettingsError) as error:
        hub.load_settings(tmp_path)
    text = str(error.value)
    assert "00-profile.yaml: limits.memory: \"lots\" is not a size like 2G" in text
    assert "00-profile.yaml: default_ui: \"vim\" is not one of: lab, notebook" in text
    assert "10-typo.yaml: idle_culing: unknown key (did you mean 'idle_culling'?)" in text
    assert "20-broken.yaml: not valid YAML" in text


@pytest.mark.parametrize(("dropin", "expected"), [
    ("authenticator: github\n", "needs oauth.client_id, oauth.client_secret"),
    ("authenticator: github\noauth: {client_id: a, client_secret: b}\n", "needs the hub's domain"),
    ("authenticator: generic-oauth\ndomain: hub.example.org\n"
     "oauth: {client_id: a, client_secret: b}\n", "oauth.authorize_url"),
    ("users: [alice@example.org]\n", "must be Unix user names"),
])
def test_settings_that_only_fail_once_merged(tmp_path, dropin, expected):
    write(tmp_path, "50-launch.yaml", dropin)
    with pytest.raises(hub.SettingsError, match=expected):
        hub.load_settings(tmp_path)
    hub.load_settings(tmp_path, consistent=False)  # the build accepts them


def test_google_names_may_be_e_mails(tmp_path):
    write(tmp_path, "50-launch.yaml", "authenticator: google\ndomain: hub.example.org\n"
          "oauth: {client_id: a, client_secret: b}\nusers: [alice@example.org]\n")
    assert hub.load_settings(tmp_path)["users"] == ["alice@example.org"]


@pytest.mark.parametrize(("name", "expected"), [
    ("alice", "alice"),
    ("alice@example.org", None),
    ("1234-student", None),
])
def test_unix_name(name, expected):
    unix = hub.unix_name(name)
    assert hub.UNIX_NAME.fullmatch(unix)
    assert unix == (expected or unix) and unix == hub.unix_name(name)
    if expected is None:
        assert unix != name and len(unix) <= 32


def test_profile_yaml_refuses_baked_oauth_secrets():
    with pytest.raises(hub.SettingsError, match="given at launch only"):
        hub.profile_yaml('{"oauth": {"client_id": "a", "client_secret": "b"}}')
    assert "authenticator: native" in hub.profile_yaml('{"authenticator": "native"}')


@pytest.mark.parametrize(("launch", "mode", "front"), [
    ({}, "auto", "self-signed"),
    ({"domain": "hub.example.org"}, "auto", "acme"),
    ({"domain": "hub.example.org"}, "self-signed", "self-signed"),
    ({"domain": "hub.example.org", "tls": {"certificate": "c", "key": "k"}}, "auto", "provided"),
    ({"tls": {"certificate": "c", "key": "k"}}, "provided", "provided"),
])
def test_front_certificate_choice(launch, mode, front):
    settings = hub.merge(hub.DEFAULTS, {"tls": {"mode": mode, "acme_email": None}})
    plan, problems = apply_launch.plan_front(settings, launch)
    assert not problems
    kind = "acme" if plan["mode"] == "acme" else (
        "provided" if plan["certificate"] == hub.PROVIDED_CERT else "self-signed")
    assert kind == front


def test_provided_mode_needs_a_certificate():
    settings = hub.merge(hub.DEFAULTS, {"tls": {"mode": "provided", "acme_email": None}})
    assert "give tls.certificate and tls.key" in apply_launch.plan_front(settings, {})[1][0]


def test_launch_file_problems_name_the_key(tmp_path):
    launch = tmp_path / "launch.yaml"
    launch.write_text("hostname: Hub_1\ndomian: x.org\nusers: [alice, alice]\n"
                      "ssh_authorized_keys: ['not a key']\nacme_email: me\n")
    with pytest.raises(apply_launch.LaunchError) as error:
        apply_launch.read_launch(launch)
    for key in ("hostname:", "domian: unknown key (did you mean 'domain'?)",
                "users: listed twice: alice", "ssh_authorized_keys: [0]:", "acme_email:"):
        assert key in str(error.value)


def test_caddyfiles():
    files = hub.render_caddyfile("files", certificate=Path("/c.crt"), key=Path("/k.key"))
    assert "admin off" in files and "tls /c.crt /k.key" in files
    assert "redir https://{host}{uri} 308" in files and "reverse_proxy 127.0.0.1:8000" in files
    acme = hub.render_caddyfile("acme", domain="hub.example.org", email="t@example.org")
    assert "hub.example.org {" in acme and "email t@example.org" in acme and "tls " not in acme
