"""The hub's configuration follows the security baseline (HARDENING.md, JupyterHub)."""

from __future__ import annotations

import json

import pytest

HUB_PY = "/opt/hubkiln/hub/bin/python"
# Loads /etc/hubkiln/jupyterhub_config.py the way JupyterHub does and prints the values.
LOAD = r"""
import json
from traitlets.config.loader import PyFileConfigLoader
c = PyFileConfigLoader("jupyterhub_config.py", path="/etc/hubkiln").load_config()
def plain(v):
    if isinstance(v, (set, frozenset)): return sorted(v)
    if isinstance(v, type): return f"{v.__module__}.{v.__name__}"
    return v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else repr(v)
print(json.dumps({f"{s}.{k}": plain(v) for s, sec in c.items() if hasattr(sec, "items")
                  for k, v in sec.items()}))
"""


@pytest.fixture(scope="module")
def config(host):
    """Loaded once per module: a Python start in the guest takes seconds under TCG."""
    with host.sudo():  # the launch drop-in (hub.d/50-launch.yaml) is root-only
        result = host.run(f"{HUB_PY} -c %s", LOAD)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(("key", "expected"), [
    ("JupyterHub.bind_url", "http://127.0.0.1:8000"),
    ("JupyterHub.hub_bind_url", "http://127.0.0.1:8081"),
    ("ConfigurableHTTPProxy.should_start", False),
    ("ConfigurableHTTPProxy.api_url", "http://127.0.0.1:8001"),
    ("JupyterHub.cleanup_servers", False),
    ("Spawner.disable_user_config", True),
    ("Authenticator.allow_existing_users", False),
    ("SystemdSpawner.dynamic_users", False),
    ("SystemdSpawner.isolate_tmp", True),
    ("SystemdSpawner.isolate_devices", True),
    ("SystemdSpawner.disable_user_sudo", True),
    ("SystemdSpawner.readonly_paths", ["/"]),
    ("SystemdSpawner.readwrite_paths", ["/home/{USERNAME}"]),
    ("Spawner.cmd", ["/opt/hubkiln/user/bin/jupyterhub-singleuser"]),
])
def test_config_value(config, key, expected):
    assert config.get(key) == expected


def test_no_admin_access_and_an_explicit_allow_list(config, given_settings):
    settings = given_settings
    assert "JupyterHub.admin_access" not in config
    if settings["authenticator"] in ("native", "lti13") and not settings["users"]:
        pytest.skip(f"'{settings['authenticator']}' without a roster lets its own approval decide")
    assert config["Authenticator.allow_all"] is False
    assert set(config["Authenticator.allowed_users"]) == set(settings["users"]) | set(
        settings["admins"])
    roles = {r["name"]: r for r in config["JupyterHub.load_roles"]}
    assert set(roles["admin"]["users"]) == set(settings["admins"])
    assert not config.get("Authenticator.admin_users")


def test_limits_come_from_the_profile(config, given_settings):
    limits = given_settings["limits"]
    assert config["Spawner.mem_limit"] == limits["memory"]
    assert config["Spawner.cpu_limit"] == float(limits["cpu"])
    assert config["SystemdSpawner.unit_extra_properties"]["TasksMax"] == str(limits["tasks"])


def test_default_ui(config, given_settings):
    assert config["Spawner.default_url"] == {"lab": "/lab", "notebook": "/tree"}[
        given_settings["default_ui"]]


def test_idle_culler_is_a_service_with_a_narrow_role(config, given_settings):
    settings = given_settings
    if not settings["idle_culling"]["enabled"]:
        pytest.skip("idle culling is disabled by the profile")
    services = {s["name"]: s for s in config["JupyterHub.services"]}
    culler = services["idle-culler"]
    assert culler.get("admin") is not True
    assert culler["user"] == "hubkiln-culler"
    timeout = settings["idle_culling"]["timeout_minutes"] * 60
    assert f"--timeout={timeout}" in culler["command"]
    roles = {r["name"]: r for r in config["JupyterHub.load_roles"]}
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert "admin:users" not in roles["idle-culler"]["scopes"]


def test_idle_culler_runs_unprivileged(host, settings, journal):
    if not settings["idle_culling"]["enabled"]:
        pytest.skip("idle culling is disabled by the profile")
    ps = host.run("ps -eo user:32,args").stdout
    lines = [line for line in ps.splitlines() if "jupyterhub_idle_culler" in line]
    assert lines, "the idle culler is not running" + journal("jupyterhub.service")
    assert all(line.split()[0] == "hubkiln-culler" for line in lines), lines


def test_class_prestart_reads_and_starts_only_the_rosters_servers(config, given_settings):
    if not given_settings["class_schedule"] or not given_settings["users"]:
        pytest.skip("the launch settings have no class_schedule (or no roster)")
    services = {s["name"]: s for s in config["JupyterHub.services"]}
    prestart = services["class-prestart"]
    assert prestart["user"] == "hubkiln-prestart" and prestart.get("admin") is not True
    roles = {r["name"]: r for r in config["JupyterHub.load_roles"]}
    assert roles["class-prestart"]["services"] == ["class-prestart"]
    assert sorted(roles["class-prestart"]["scopes"]) == sorted(
        f"{scope}!user={name}" for name in given_settings["users"]
        for scope in ("read:servers", "start:servers"))


@pytest.mark.parametrize(("path", "mode"), [
    ("/etc/hubkiln/jupyterhub_config.py", 0o644),
    ("/etc/hubkiln/hub.d/00-profile.yaml", 0o644),
])
def test_configuration_is_root_owned(host, path, mode):
    config_file = host.file(path)
    assert (config_file.user, config_file.group, config_file.mode) == ("root", "root", mode)


def test_oauth_secret_is_not_in_the_baked_settings(host):
    assert "client_secret" not in host.file("/etc/hubkiln/hub.d/00-profile.yaml").content_string


def test_the_image_runs_with_the_settings_it_was_given(image_settings, given_settings):
    """The image's merged hub settings are those of its profile and launch settings: a
    setting lost on the way (build, drop-ins, apply-launch) fails here. OAuth secrets
    are hidden in the image's listing; the hashes are compared as given."""
    shown = dict(image_settings)
    wanted = {**given_settings, "oauth": "(hidden)" if given_settings["oauth"] else None}
    for key in sorted(set(shown) | set(wanted)):
        assert shown.get(key) == wanted.get(key), (
            f"{key}: the image runs with {shown.get(key)!r}, it was given {wanted.get(key)!r}")
