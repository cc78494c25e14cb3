"""The settings contract, end to end without a VM: a maximal profile and a maximal
launch file pass through the build (hubkiln.config.profile, hubkiln.config.launch, the hub settings
drop-in and the user-data), then through the image's own programs (hubkiln-apply-launch,
hubkiln_hub.load_settings, jupyterhub_config.py), and come out as the hub configuration
they should produce. Expected values are written here, from the fixtures' text, never
read back from the pipeline.

The trace of `hub.limits.memory` (docs/architecture.md): the profile's YAML, checked
against `$defs/hub` of provision/files/hub/settings.schema.yaml (hubkiln/config/schema.yaml
`$ref`s it) -> the drop-in hub.d/00-profile.yaml (provision.render_hub_settings) ->
hubkiln_hub.load_settings in the image -> jupyterhub_config.py's Spawner.mem_limit ->
tests/image/test_limits.py, which makes a student's kernel exceed it.
"""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_launch import make_cert
from traitlets.config.loader import PyFileConfigLoader

from hubkiln.config import guest
from hubkiln.config.guest import load_module
from hubkiln.config.launch import check_launch_for_profile, load_launch
from hubkiln.config.profile import load_profile
from hubkiln.deliver.seed import render_user_data
from hubkiln.stages.provision import provision_env, render_hub_settings

PROJECT = Path(__file__).resolve().parents[2]
FILES = PROJECT / "provision" / "files"
FIXTURES = Path(__file__).parent / "fixtures"
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

hub = guest.settings()
front = guest.front()
apply_launch = load_module("hubkiln_apply_launch", FILES / "bin" / "hubkiln-apply-launch")
HASH = "pbkdf2-sha256$10000$" + "ab" * 8 + "$" + "cd" * 32
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxyr2P28/gcSKVzoD4TLPhorQ7JTthbfAC0bGjVYhmh t@lap"


def maximal_launch(folder: Path) -> dict:
    """A launch file that sets every key (a generic OIDC client: the LTI-only keys
    `oauth.issuer` and `oauth.jwks_endpoint` cannot go with it; the PEM files, the
    alternative to inline PEM, are covered by tests/unit/test_launch.py)."""
    certificate, key = (path.read_text() for path in make_cert(folder, "hub",
                                                               "hub.example.org"))
    root = make_cert(folder, "root", "Uni Root CA")[0].read_text()
    return {
        "hostname": "optim-hub",
        "domain": "hub.example.org",
        "acme_email": "ops@example.org",
        "acme_ca": "https://acme.uni.example/acme/directory",
        "acme_ca_root": root,
        "admins": ["prof"],
        "users": ["alice", "ada@uni.example.org"],
        "ssh_authorized_keys": [KEY],
        "admin_password_hashes": {"prof": HASH},
        "enrolment_codes": False,
        "enrolment_code_hashes": {"alice": HASH},
        "oauth": {"client_id": "hub-client", "client_secret": "s3cret",
                  "authorize_url": "https://login.uni.example/authorize",
                  "token_url": "https://login.uni.example/token",
                  "userdata_url": "https://login.uni.example/userinfo",
                  "username_claim": "email", "scope": ["openid", "email"],
                  "ca_certificate": root},
        "tls": {"certificate": certificate, "key": key},
        "class_schedule": {"timezone": "Europe/Berlin", "prestart_minutes": 10,
                           "memory_reserve": "512M",
                           "sessions": [{"days": ["mon", "wed"], "start": "09:00",
                                         "minutes": 90}]},
    }


def root_of(folder: Path) -> str:
    """The root certificate maximal_launch gives (acme_ca_root, oauth.ca_certificate)."""
    return (folder / "root.crt").read_text()


def keys_set(data, path=""):
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else key
            yield here
            yield from keys_set(value, here)
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        for item in data:
            yield from keys_set(item, path + "[]")


def through_the_image(profile_ref, launch_data: dict, folder: Path, monkeypatch):
    """Build side, then image side: (settings the hub reads, its config, the front's plan,
    the launch document the image received)."""
    profile = load_profile(profile_ref)
    launch_file = folder / "launch.yaml"
    launch_file.write_text(yaml.safe_dump(launch_data))
    launch = load_launch(launch_file, openssl=OPENSSL)
    assert check_launch_for_profile(launch, profile) == []
    hub_d = folder / "hub.d"
    hub_d.mkdir()
    (hub_d / "00-profile.yaml").write_text(render_hub_settings(profile))
    assert hub.dropin_problems(hub_d / "00-profile.yaml") == []
    # What cloud-init writes into the image, from the user-data.
    (entry,) = yaml.safe_load(render_user_data(launch))["write_files"]
    received = folder / "received-launch.yaml"
    received.write_text(entry["content"])
    document = apply_launch.read_launch(received)
    (hub_d / "50-launch.yaml").write_text(yaml.safe_dump(apply_launch.launch_dropin(document)))
    settings = hub.load_settings(hub_d)
    plan, problems = front.plan_front(settings["tls"]["mode"], document,
                                      settings["tls"]["acme_email"])
    assert problems == []
    # jupyterhub_config.py as JupyterHub loads it, reading this hub.d (the hubkiln_hub it
    # imports: other tests may have loaded the file again under that name).
    monkeypatch.setattr(sys.modules["hubkiln_hub"], "load_settings", lambda: settings)
    monkeypatch.setattr(os, "makedirs", lambda *args, **kwargs: None)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(FILES / "hub")).load_config()
    return settings, config, plan, document


def test_the_maximal_launch_sets_every_launch_key(tmp_path):
    rules = guest.schema()
    every = set()
    stack = [("", rules.definition("launch"))]
    while stack:
        prefix, node = stack.pop()
        for key, child in rules.resolve(node, rules.schema()).get("properties", {}).items():
            here = f"{prefix}.{key}" if prefix else key
            child = rules.resolve(child, rules.schema())
            every.add(here)
            stack.append((here, child))
            items = rules.resolve(child.get("items", {}), rules.schema())
            if "properties" in items:
                stack.append((here + "[]", items))
    lti_only = {"oauth.issuer", "oauth.jwks_endpoint", "oauth.courses", "oauth.frame_ancestors"}
    assert every - lti_only - set(keys_set(maximal_launch(tmp_path))) == set()


def test_a_maximal_profile_and_launch_become_the_hub_configuration(tmp_path, monkeypatch):
    settings, c, plan, document = through_the_image(FIXTURES / "maximal.yaml",
                                                    maximal_launch(tmp_path), tmp_path,
                                                    monkeypatch)
    # who logs in, and how (profile: generic-oauth, admins teacher and ta_1)
    assert c.JupyterHub.authenticator_class == "oauthenticator.generic.GenericOAuthenticator"
    assert c.Authenticator.allowed_users == {"teacher", "ta_1", "prof", "alice",
                                             "ada@uni.example.org"}
    assert c.JupyterHub.load_roles[0] == {"name": "admin", "users": ["prof", "ta_1", "teacher"]}
    assert c.Authenticator.allow_all is False
    assert c.OAuthenticator.client_id == "hub-client"
    assert c.OAuthenticator.client_secret == "s3cret"
    assert c.OAuthenticator.oauth_callback_url == "https://hub.example.org/hub/oauth_callback"
    assert c.OAuthenticator.scope == ["openid", "email"]
    assert c.GenericOAuthenticator.authorize_url == "https://login.uni.example/authorize"
    assert c.GenericOAuthenticator.token_url == "https://login.uni.example/token"
    assert c.GenericOAuthenticator.userdata_url == "https://login.uni.example/userinfo"
    assert c.GenericOAuthenticator.username_claim == "email"
    # the provider's own root, trusted for its endpoints only
    assert document["oauth"]["ca_certificate"] == root_of(tmp_path)
    assert c.OAuthenticator.http_request_kwargs == {"ca_certs": str(hub.LOGIN_CA_ROOT)}
    # the students' servers (profile: memory 1.5G, cpu 0.5, tasks 256, notebook)
    assert c.Spawner.mem_limit == "1.5G"
    assert c.Spawner.cpu_limit == 0.5
    assert c.SystemdSpawner.unit_extra_properties["TasksMax"] == "256"
    assert c.Spawner.default_url == "/tree"
    # the server's options as SystemdSpawner expands them (str.format with the user's
    # name and id): kernels on Unix sockets in the server's private /tmp, no jupyter_lsp
    assert [arg.format(USERNAME="ada", USERID=7) for arg in c.Spawner.args] == [
        "--KernelManager.transport=ipc", "--ServerApp.jpserver_extensions={'jupyter_lsp': False}"]
    assert c.Spawner.environment["JUPYTER_RUNTIME_DIR"].startswith("/tmp/")
    assert c.SystemdSpawner.isolate_tmp is True
    # the account and its material (profile: delivery link, disk 1.5G)
    calls = []

    async def fake_exec(*argv, **kwargs):
        calls.append(argv)
        return SimpleNamespace(returncode=0, communicate=lambda: _done(b"made"))

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_exec)
    spawner = SimpleNamespace(user=SimpleNamespace(name="ada@uni.example.org"),
                              log=SimpleNamespace(info=lambda *a: None))
    asyncio.run(c.Spawner.pre_spawn_hook(spawner))
    (argv,) = calls
    assert argv[1:5] == ("--delivery", "link", "--disk-limit-kib", str(3 * 512 * 1024))
    assert argv[5] == hub.unix_name("ada@uni.example.org") != "ada@uni.example.org"
    # the services (profile: culling after 30 minutes; launch: a class schedule)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert "--timeout=1800" in services["idle-culler"]["command"]
    # 30 minutes: the hub learns of each server's activity within 5 minutes (a sixth),
    # from the server's reports and from the proxy (JupyterHub's 60 s)
    assert c.Spawner.environment["JUPYTERHUB_ACTIVITY_INTERVAL"] == "300"
    assert c.JupyterHub.last_activity_interval == 60
    assert "class-prestart" in services
    assert settings["class_schedule"]["timezone"] == "Europe/Berlin"
    assert settings["class_schedule"]["memory_reserve"] == "512M"
    # the course kernel's name (profile: "Python 3 (Maximal)"), as the build passes it
    assert settings["kernel_display_name"] == "Python 3 (Maximal)"
    assert provision_env(load_profile(FIXTURES / "maximal.yaml"))[
        "HUBKILN_KERNEL_DISPLAY_NAME"] == "Python 3 (Maximal)"
    # the front (profile: tls.mode self-signed): the launch's certificate and CA are not used
    assert plan == {"mode": "files", "certificate": front.SELF_SIGNED_CERT,
                    "key": front.SELF_SIGNED_KEY}
    assert document["acme_ca"] == "https://acme.uni.example/acme/directory"


async def _done(output: bytes):
    return output, b""


def test_a_password_login_profile_and_the_example_launch(tmp_path, monkeypatch):
    """The ci profile (firstuse) with examples/launch.yaml plus hashes and codes."""
    launch = yaml.safe_load((PROJECT / "examples" / "launch.yaml").read_text())
    launch.update({"admin_password_hashes": {"teacher": HASH},
                   "enrolment_code_hashes": {"alice": HASH, "bob": HASH, "carol": HASH}})
    settings, c, plan, _ = through_the_image("ci", launch, tmp_path, monkeypatch)
    assert c.JupyterHub.authenticator_class == "hubkiln_auth.HubkilnFirstUseAuthenticator"
    assert c.Authenticator.allowed_users == {"teacher", "alice", "bob", "carol"}
    assert c.Authenticator.admin_password_hashes == {"teacher": HASH}
    assert c.HubkilnFirstUseAuthenticator.enrolment_codes is True
    assert c.HubkilnFirstUseAuthenticator.enrolment_code_hashes == {
        "alice": HASH, "bob": HASH, "carol": HASH}
    assert c.Authenticator.request_otp is True
    assert c.Authenticator.username_pattern == guest.schema().definition("unix_name")["pattern"]
    # the example names a domain: the ci profile's tls.mode auto gets it over ACME
    assert plan["mode"] == "acme" and plan["domain"] == "hub.example.org"
    assert plan["ca"] == front.LETS_ENCRYPT and plan["email"] == "teacher@example.org"
    assert settings["limits"] == load_profile("ci")["hub"]["limits"]
    assert "class-prestart" not in {s["name"] for s in c.JupyterHub.services}
    assert sys.executable in next(s for s in c.JupyterHub.services
                                  if s["name"] == "idle-culler")["command"]


def test_an_lti_launch_becomes_the_hubs_lti_configuration(tmp_path, monkeypatch):
    """The LTI 1.3 keys (the lti13 variant of the ci profile): the course, the frames and
    cookies an LMS needs, the LMS's own root."""
    root = make_cert(tmp_path, "root", "LMS Root CA")[0].read_text()
    launch = {"domain": "hub.example.org", "users": ["alice"], "admins": ["prof"],
              "oauth": {"client_id": "tool-1", "authorize_url": "https://lms.uni.example/auth",
                        "issuer": "https://lms.uni.example",
                        "jwks_endpoint": "https://lms.uni.example/jwks",
                        "username_claim": "custom_username", "courses": ["c-42"],
                        "frame_ancestors": ["https://moodle.uni.example"],
                        "ca_certificate": root}}
    trusted = []
    monkeypatch.setattr(sys.modules.get("hubkiln_lti") or guest.load_module(
        "hubkiln_lti", FILES / "hub" / "hubkiln_lti.py"), "trust_lms_root", trusted.append)
    _, c, _, document = through_the_image(PROJECT / "tests/variants/lti13.yaml", launch,
                                          tmp_path, monkeypatch)
    assert c.JupyterHub.authenticator_class == "hubkiln_lti.HubkilnLTI13Authenticator"
    assert c.LTI13Authenticator.client_id == {"tool-1"}
    assert c.LTI13Authenticator.username_key == "custom_username"
    assert c.HubkilnLTI13Authenticator.courses == {"c-42"}
    assert c.Authenticator.manage_groups is True
    assert trusted == [hub.LOGIN_CA_ROOT]
    policy = "frame-ancestors 'self' https://moodle.uni.example"
    assert c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"] == policy
    assert c.JupyterHub.tornado_settings["cookie_options"] == {"samesite": "None",
                                                               "secure": True}
    # the servers' own pages: the same policy, as SystemdSpawner passes the argument on
    server = c.Spawner.args[-1].format(USERNAME="alice", USERID=7)
    assert server.startswith("--ServerApp.tornado_settings=")
    assert ast.literal_eval(server.split("=", 1)[1]) == {
        "headers": {"Content-Security-Policy": policy},
        "xsrf_cookie_kwargs": {"samesite": "None", "secure": True}}
