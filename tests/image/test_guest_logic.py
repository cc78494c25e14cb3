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
    assert settings["limits"] == {"memory": "2G", "cpu": 2, "tasks": 512, "disk": "2G"}  # merge


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


def test_the_front_sets_the_clients_address_and_security_headers():
    self_signed = hub.render_caddyfile("files", certificate=hub.SELF_SIGNED_CERT,
                                       key=hub.SELF_SIGNED_KEY)
    provided = hub.render_caddyfile("files", certificate=hub.PROVIDED_CERT,
                                    key=hub.PROVIDED_KEY)
    acme = hub.render_caddyfile("acme", domain="hub.example.org")
    for config in (self_signed, provided, acme):
        # The hub reads X-Real-Ip first: the front sets it, whatever the client sent.
        assert "header_up X-Real-Ip {remote_host}" in config
        assert "X-Content-Type-Options nosniff" in config
        assert "Referrer-Policy same-origin" in config
    # HSTS only with a real certificate.
    assert "Strict-Transport-Security" not in self_signed
    assert "Strict-Transport-Security" in provided and "Strict-Transport-Security" in acme


@pytest.mark.skipif(not Path("/usr/bin/caddy").exists(), reason="needs caddy (apt-get install "
                    "caddy) to check the front configs")
def test_caddy_accepts_every_front_config(tmp_path):
    import subprocess

    for name, config in {
        "self-signed": hub.render_caddyfile("files", certificate=hub.SELF_SIGNED_CERT,
                                            key=hub.SELF_SIGNED_KEY),
        "acme": hub.render_caddyfile("acme", domain="hub.example.org", email="t@example.org"),
    }.items():
        (tmp_path / name).write_text(config)
        result = subprocess.run(["/usr/bin/caddy", "adapt", "--config", str(tmp_path / name),
                                 "--adapter", "caddyfile"], capture_output=True, text=True,
                                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, f"{name}: {result.stderr[-500:]}"


# ---- logins (hubkiln_auth): the rules, without JupyterHub

auth = load("hubkiln_auth", FILES / "hub" / "hubkiln_auth.py")


def test_secret_hashes_verify_only_their_secret():
    stored = auth.hash_secret("correct horse")
    assert auth.is_supported_hash(stored)
    assert auth.verify_secret("correct horse", stored)
    assert not auth.verify_secret("correct hors", stored)
    assert not auth.verify_secret("correct horse", stored[:-1] + "0")
    for bogus in ("", "plain", "pbkdf2-sha256$1$s$" + "0" * 64, "$2b$12$short"):
        assert not auth.is_supported_hash(bogus) and not auth.verify_secret("x", bogus)
    # Every hash the module makes passes the settings' own pattern (one format, two sides).
    assert hub.SECRET_HASH.fullmatch(stored)


def test_enrolment_codes_forgive_case_spaces_and_dashes():
    assert auth.normalise_code("k7qm 4xpa9rtw") == "K7QM-4XPA-9RTW"
    assert auth.normalise_code(" K7QM-4XPA-9RTW ") == "K7QM-4XPA-9RTW"
    assert auth.normalise_code("K7QM-4XPA-9RTX") != "K7QM-4XPA-9RTW"


def test_a_guessed_name_is_locked_after_the_failures_and_freed_later():
    now = [1000.0]
    guard = auth.LoginGuard(max_failures=3, window=60, lockout=120, clock=lambda: now[0])
    assert not guard.failed("alice") and not guard.failed("alice")
    assert guard.locked("alice") == 0
    assert guard.failed("alice")  # the third: locked now
    assert guard.locked("alice") == pytest.approx(120)
    assert guard.locked("bob") == 0  # one name's failures never lock another
    now[0] += 121
    assert guard.locked("alice") == 0
    # Failures outside the window do not add up; a success forgets them.
    guard.failed("carol")
    now[0] += 61
    assert not guard.failed("carol") and not guard.failed("carol")
    guard.succeeded("carol")
    assert not guard.failed("carol")


def test_spent_codes_are_remembered_in_a_private_file(tmp_path):
    spent = auth.SpentCodes(tmp_path / "hub" / "enrolment-spent")
    stored = auth.hash_secret("ABCD-EFGH-JKLM", iterations=1000)
    assert stored not in spent
    spent.spend(stored)
    assert stored in spent and auth.SpentCodes(spent.path).__contains__(stored)
    assert oct(spent.path.stat().st_mode & 0o777) == "0o600"
    assert oct(spent.path.parent.stat().st_mode & 0o777) == "0o700"


def test_hashes_name_only_listed_people(tmp_path):
    digest = auth.hash_secret("x", iterations=1000)
    write(tmp_path, "00-profile.yaml", "admins: [ann]\nusers: [alice]\n")
    write(tmp_path, "50-launch.yaml", f"admin_password_hashes: {{bob: '{digest}'}}\n"
          f"enrolment_code_hashes: {{alice: '{digest}', eve: '{digest}'}}\n")
    with pytest.raises(hub.SettingsError) as error:
        hub.load_settings(tmp_path)
    assert "admin_password_hashes: \"bob\" not in admins" in str(error.value)
    assert "enrolment_code_hashes: \"eve\" not in users" in str(error.value)
    write(tmp_path, "50-launch.yaml", "admin_password_hashes: {ann: 'plaintext'}\n")
    with pytest.raises(hub.SettingsError, match="admin_password_hashes.ann: .* is not a bcrypt"):
        hub.load_settings(tmp_path)


def test_reserved_names_are_one_rule(tmp_path):
    for name in ("root", "adm", "sudo", "ubuntu", "hubkiln-x", "systemd-y"):
        assert hub.reserved_name_problem(name), name
    assert hub.reserved_name_problem("alice") is None
    problems = apply_launch.account_problems({"admins": ["adm"], "users": ["sudo", "alice"]})
    assert any("'adm' is reserved" in p for p in problems)
    assert any("'sudo' is reserved" in p for p in problems)
    assert not any("alice" in p for p in problems)
