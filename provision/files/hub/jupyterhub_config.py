# JupyterHub configuration of a hubkiln image. Installed by provision/50-hub-config.sh;
# do not edit it here: the settings live in /etc/hubkiln/hub.d/*.yaml (00-profile.yaml
# baked from the course profile, 50-launch.yaml written by hubkiln-apply-launch from
# the launch settings). Check them with `/opt/hubkiln/hub/bin/python -m hubkiln_hub check`.
#
# Layout: the hub on 127.0.0.1:8081; configurable-http-proxy, its own unit
# (jupyterhub-proxy.service), on 127.0.0.1:8000 with its API on 127.0.0.1:8001;
# the HTTPS front (hubkiln-front.service, Caddy) on 443 and 80 in front of it.
# Secrets are made at first boot by hubkiln-firstboot, never baked.
import asyncio
import os
import sys

import hubkiln_lti
from hubkiln_hub import (
    LOGIN_CA_ROOT,
    UNIX_NAME,
    SettingsError,
    activity_intervals,
    load_settings,
    unix_name,
)
from hubkiln_prestart import service_config as prestart_service
from hubkiln_schema import parse_size
from hubkiln_spawner import HubkilnSpawner


def systemd_spawner_literal(text: str) -> str:
    """`text` as an argument SystemdSpawner passes on unchanged (it str.formats each)."""
    return text.replace("{", "{{").replace("}", "}}")


c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

try:
    settings = load_settings()
except SettingsError as error:
    # One clear message in the journal instead of a traceback; systemd retries.
    sys.exit(f"hubkiln: the hub settings cannot be used, the hub does not start:\n{error}")

STATE = "/var/lib/hubkiln/hub"
# Beside the homes (the data disk when there is one): survives an OS disk swap,
# so no one can claim a student's name with a new first-use password.
HOME_STATE = "/home/.hubkiln/hub"
USER_ENV = "/opt/hubkiln/user"
PREPARE_USER = "/usr/local/sbin/hubkiln-prepare-user"

# ---- network: everything on localhost, the front terminates HTTPS
c.JupyterHub.bind_url = "http://127.0.0.1:8000"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:8081"
c.ConfigurableHTTPProxy.should_start = False  # its own unit: routes survive a hub restart
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
c.ConfigurableHTTPProxy.command = ["/opt/hubkiln/proxy/bin/configurable-http-proxy"]
# auth_token: CONFIGPROXY_AUTH_TOKEN, from the unit's EnvironmentFile
c.JupyterHub.cleanup_servers = False  # a hub restart leaves students' servers running
# How fresh the hub's record of each server's activity is: the proxy's traffic, read
# every proxy_poll seconds (which also re-adds routes after a proxy restart), and the
# server's own reports (Spawner.environment below); fresh enough for the idle culler.
activity = activity_intervals(settings["idle_culling"])
c.JupyterHub.last_activity_interval = activity["proxy_poll"]

# ---- state and secrets
c.JupyterHub.db_url = f"sqlite:///{STATE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/var/lib/hubkiln/secrets/jupyterhub_cookie_secret"
# Cookies are Secure: the front sends X-Forwarded-Proto: https and the proxy keeps it.

# ---- who may log in: the roster and the admins, nobody else
auth = settings["authenticator"]
admins = set(settings["admins"])
roster = set(settings["users"])
c.JupyterHub.authenticator_class = {
    # hubkiln_auth: admins log in with the launch's password hash, never a first-use
    # password or a sign-up; firstuse students claim their name with an enrolment code.
    "firstuse": "hubkiln_auth.HubkilnFirstUseAuthenticator",
    "native": "hubkiln_auth.HubkilnNativeAuthenticator",
    "github": "oauthenticator.github.GitHubOAuthenticator",
    "google": "oauthenticator.google.GoogleOAuthenticator",
    "generic-oauth": "oauthenticator.generic.GenericOAuthenticator",
    # hubkiln_lti: the launch's course, admin and group; cookies and frames for an LMS.
    "lti13": "hubkiln_lti.HubkilnLTI13Authenticator",
}[auth]
c.Authenticator.allowed_users = roster | admins
c.Authenticator.allow_existing_users = False  # the roster is the authority
# native: admins approve sign-ups; lti13: the LMS decides who launches. Both let
# everyone they accept in when no roster is given. The others never do.
c.Authenticator.allow_all = auth in ("native", "lti13") and not roster
# The exact admin set (admin_users would only ever add admins, never remove one).
c.JupyterHub.load_roles = [{"name": "admin", "users": sorted(admins)}]
if auth in ("firstuse", "native"):
    c.Authenticator.username_pattern = UNIX_NAME.pattern  # the settings contract's unix_name
if auth in ("firstuse", "native"):
    os.makedirs(HOME_STATE, mode=0o700, exist_ok=True)
    c.Authenticator.admin_names = admins
    c.Authenticator.admin_password_hashes = settings["admin_password_hashes"]
if auth == "firstuse":
    c.FirstUseAuthenticator.dbm_path = f"{HOME_STATE}/passwords.dbm"
    c.FirstUseAuthenticator.create_users = True  # refused later unless on the roster
    c.FirstUseAuthenticator.min_password_length = 8
    c.HubkilnFirstUseAuthenticator.enrolment_codes = settings["enrolment_codes"]
    c.HubkilnFirstUseAuthenticator.enrolment_code_hashes = settings["enrolment_code_hashes"]
    if settings["enrolment_codes"]:
        # JupyterHub's own second field of the login form (`otp`) carries the code.
        c.Authenticator.request_otp = True
        c.Authenticator.otp_prompt = "Enrolment code (first login only):"
if auth == "native":
    c.NativeAuthenticator.minimum_password_length = 8
    c.NativeAuthenticator.check_common_password = True
    # Sign-ups and approvals are the authority here: keep them beside the homes (the
    # data disk when there is one), so that after an OS disk swap nobody can sign up
    # as a student whose home was kept.
    c.JupyterHub.db_url = f"sqlite:///{HOME_STATE}/jupyterhub.sqlite"
oauth = settings["oauth"] or {}
if auth in ("github", "google", "generic-oauth"):
    c.OAuthenticator.client_id = oauth["client_id"]
    c.OAuthenticator.client_secret = oauth["client_secret"]
    c.OAuthenticator.oauth_callback_url = f"https://{settings['domain']}/hub/oauth_callback"
    if oauth.get("scope"):
        c.OAuthenticator.scope = oauth["scope"]
    if oauth.get("ca_certificate"):
        # A provider with a private CA: trusted for its endpoints only (hubkiln-apply-launch
        # writes the launch's oauth.ca_certificate there).
        c.OAuthenticator.http_request_kwargs = {"ca_certs": str(LOGIN_CA_ROOT)}
if auth == "generic-oauth":
    c.GenericOAuthenticator.authorize_url = oauth["authorize_url"]
    c.GenericOAuthenticator.token_url = oauth["token_url"]
    c.GenericOAuthenticator.userdata_url = oauth["userdata_url"]
    c.GenericOAuthenticator.username_claim = oauth.get("username_claim", "preferred_username")
if auth == "lti13":
    c.LTI13Authenticator.client_id = {oauth["client_id"]}
    c.LTI13Authenticator.authorize_url = oauth["authorize_url"]
    c.LTI13Authenticator.issuer = oauth["issuer"]
    c.LTI13Authenticator.jwks_endpoint = oauth["jwks_endpoint"]
    c.LTI13Authenticator.username_key = oauth.get("username_claim", "email")
    c.LTI13Authenticator.uri_scheme = "https"
    c.HubkilnLTI13Authenticator.courses = set(oauth.get("courses") or [])
    c.Authenticator.manage_groups = True  # each launch's course is its user's group
    if oauth.get("ca_certificate"):
        hubkiln_lti.trust_lms_root(LOGIN_CA_ROOT)
    # A launch is a cross-site form post, often in the LMS's frame: the hub's cookies
    # must come back with it (SameSite=None; the servers get the same options from the
    # hub), and the LMS may frame the hub and the servers.
    lms_origins = hubkiln_lti.frame_ancestors(oauth)
    c.JupyterHub.tornado_settings = {
        "cookie_options": dict(hubkiln_lti.CROSS_SITE_COOKIES),
        "xsrf_cookie_kwargs": dict(hubkiln_lti.CROSS_SITE_COOKIES),
        "headers": {"Content-Security-Policy":
                    hubkiln_lti.content_security_policy(lms_origins)},
    }


# ---- students' servers: one systemd unit per student, as their own Unix account;
# a starting server gets the CPU before running kernels (hubkiln_spawner)
async def prepare_account(spawner):
    """Create the student's Unix account and hand out the course material (as root)."""
    name = unix_name(spawner.user.name)
    quota = ["--disk-limit-kib", str(parse_size(limits["disk"]) // 1024)] if limits["disk"] \
        else []
    process = await asyncio.create_subprocess_exec(
        PREPARE_USER, "--delivery", settings["content"]["delivery"], *quota, name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode(errors="replace").strip()
    if process.returncode != 0:
        raise RuntimeError(f"{PREPARE_USER} {name} failed: {output}")
    for line in output.splitlines():
        spawner.log.info("%s", line)


limits = settings["limits"]
c.JupyterHub.spawner_class = HubkilnSpawner
c.Spawner.pre_spawn_hook = prepare_account
c.Spawner.cmd = [f"{USER_ENV}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = {"lab": "/lab", "notebook": "/tree"}[settings["default_ui"]]
# Kernels talk to their server over Unix sockets in the server's private /tmp, not
# over TCP ports of 127.0.0.1: at class start a kernel's randomly picked port was
# taken meanwhile (ZMQError: Address already in use), its restarts kept the same
# ports, and the kernel died (issue 14). The sockets are also out of every other
# student's reach (PrivateTmp). jupyter_lsp, a server extension with no language
# server in the image, only costs each start 0.15 s of CPU scanning for some.
c.Spawner.environment = {"JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
                         "JUPYTERHUB_ACTIVITY_INTERVAL": str(activity["report"])}
c.Spawner.args = ["--KernelManager.transport=ipc", "--ServerApp.jpserver_extensions="
                  + systemd_spawner_literal(repr({"jupyter_lsp": False}))]
if auth == "lti13":
    c.Spawner.args.append("--ServerApp.tornado_settings=" + systemd_spawner_literal(
        repr(hubkiln_lti.server_tornado_settings(lms_origins))))
c.Spawner.disable_user_config = True
c.Spawner.ip = "127.0.0.1"
c.Spawner.mem_limit = limits["memory"]
c.Spawner.cpu_limit = float(limits["cpu"])
# A student's first start imports JupyterLab from a cold page cache: seconds on
# KVM, but minutes on an emulated (TCG) or overcommitted VM. A slow start that
# succeeds beats one killed at the deadline, so be generous.
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
c.SystemdSpawner.dynamic_users = False
c.SystemdSpawner.username_template = "{USERNAME}"
c.SystemdSpawner.unit_name_template = "jupyter-{USERNAME}-singleuser"
# A lower CPU weight than the hub's (provision/files/systemd/hubkiln-students.slice).
c.SystemdSpawner.slice = "hubkiln-students.slice"
c.SystemdSpawner.default_shell = "/bin/bash"
c.SystemdSpawner.extra_paths = [f"{USER_ENV}/bin"]
c.SystemdSpawner.isolate_tmp = True
c.SystemdSpawner.isolate_devices = True
c.SystemdSpawner.disable_user_sudo = True
c.SystemdSpawner.readonly_paths = ["/"]
c.SystemdSpawner.readwrite_paths = ["/home/{USERNAME}"]
c.SystemdSpawner.unit_extra_properties = {
    "TasksMax": str(limits["tasks"]),
    "ProtectProc": "invisible",  # students see only their own processes
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    # PrivateDevices bind-mounts the host's /dev/shm and /dev/mqueue into the private
    # /dev: give each server its own, and its own System V / POSIX IPC namespace.
    "TemporaryFileSystem": "/dev/shm:mode=1777,nosuid,nodev,noexec "
                           "/dev/mqueue:mode=1777,nosuid,nodev,noexec",
    "PrivateIPC": "yes",
    # A kernel past the memory limit is killed by the kernel's OOM killer; the
    # student's server goes on (JupyterLab offers to restart the kernel).
    "OOMPolicy": "continue",
}

# ---- hub services, each with just the permissions it needs
services = []
# idle culling
culling = settings["idle_culling"]
if culling["enabled"]:
    services.append({
        "name": "idle-culler",
        "user": "hubkiln-culler",
        "cwd": "/",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                    f"--timeout={culling['timeout_minutes'] * 60}"],
    })
    c.JupyterHub.load_roles.append({
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    })
# pre-starting the roster's servers before each class (launch setting class_schedule):
# reads and starts the roster's servers only (hubkiln_prestart)
prestart = prestart_service(settings, sys.executable)
if prestart:
    services.append(prestart[0])
    c.JupyterHub.load_roles.append(prestart[1])
if services:
    c.JupyterHub.services = services
