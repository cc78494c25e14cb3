"""What one boot of an image is tested with, made fresh for each boot.

A throwaway admin SSH key; the launch settings (one admin, two students, and a roster
student nobody logs in as) with the secrets `invoke seed` would issue; and what the
profile's settings need at launch besides: for `tls.mode: provided` the hub's own
certificate; for the `generic-oauth` login a login provider's client, and for `lti13`
the hub's registration with an LMS, whose provider and LMS the image tests start
themselves (tests/image/idp.py, tests/image/lms.py) from the descriptions written here
(HUBKILN_TEST_IDP, HUBKILN_TEST_LMS). Everything lives in one temporary folder, removed
with the boot.

Limits: the provider and the LMS listen on 127.0.0.1 of the network the tests run in,
which the guest shares only in the container engine (the VM's share then cannot log
in through them: tests/image/conftest.py says so).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config import launch
from hubkiln.config.guest import settings as guest_settings
from hubkiln.config.profile import Profile
from hubkiln.deliver import seed
from hubkiln.errors import BuildError
from hubkiln.machine import nocloud

TEST_ADMIN = "teacher"
#: The admin's SSH account (with sudo), which the tests log in as: not the hub account.
TEST_OPERATOR = guest_settings().operator_name(TEST_ADMIN)
TEST_STUDENTS = ("student1", "student2")
#: A roster student nobody logs in as: the hostile tests try to claim and guess it.
TEST_TARGET = "student3"
#: A guest port nothing may reach: the firewall test listens there and expects a drop.
BLOCKED_GUEST_PORT = 8099
TEST_HOSTNAME = "hubkiln-test"
#: The hub's name for the logins that need one (a reserved top-level domain: RFC 2606).
TEST_DOMAIN = "hub.hubkiln.test"
#: Where the tests' login provider listens, beside the guest's 22, 80 and 443.
IDP_PORT = 9443
#: Someone the login provider knows who is on neither the roster nor the admins.
IDP_STRANGER = "mallory"
#: The scopes the hub asks the provider for (the provider gives only their claims).
IDP_SCOPES = ["openid", "profile"]
OAUTH_LOGINS = ("generic-oauth",)
#: Where the tests' LMS listens (LTI 1.3), and its courses: the hub's own, and another.
LMS_PORT = 9444
TEST_COURSE = "hubkiln-course-1"
OTHER_COURSE = "hubkiln-course-2"


def validation_launch_document(public_key: str) -> dict[str, Any]:
    """The launch settings every validation boots with."""
    return {
        "hostname": TEST_HOSTNAME,
        "admins": [TEST_ADMIN],
        "users": [*TEST_STUDENTS, TEST_TARGET],
        "ssh_authorized_keys": [public_key],
    }


def certificate_command(key: Path, certificate: Path, name: str) -> list[str]:
    """openssl's command for a self-signed P-256 certificate of `name` and 127.0.0.1,
    valid for two days (pure)."""
    return ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
            str(certificate), "-days", "2", "-subj", f"/CN={name}", "-addext",
            f"subjectAltName=DNS:{name},IP:127.0.0.1"]


def make_certificate(folder: Path, stem: str, name: str) -> tuple[Path, Path]:
    """A fresh self-signed certificate and its key: (certificate, key) files."""
    certificate, key = folder / f"{stem}.crt", folder / f"{stem}.key"
    done = subprocess.run(certificate_command(key, certificate, name), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"openssl could not make the test certificate {name}: "
                         f"{done.stderr.strip()}", hint="is openssl installed?")
    key.chmod(0o600)
    return certificate, key


def idp_description(certificate: Path, key: Path) -> dict[str, Any]:
    """The login provider the tests start (tests/image/idp.py), as JSON-ready data: its
    address and certificate, its one client, and who it knows (the launch's admins
    and students, and IDP_STRANGER), each with a password of its own."""
    people = [TEST_ADMIN, *TEST_STUDENTS, TEST_TARGET, IDP_STRANGER]
    return {
        "host": "127.0.0.1", "port": IDP_PORT,
        "certificate": str(certificate), "key": str(key),
        "client_id": "hubkiln-" + os.urandom(4).hex(),
        "client_secret": os.urandom(24).hex(),
        "redirect_uris": [f"https://{TEST_DOMAIN}/hub/oauth_callback"],
        "scopes": IDP_SCOPES,
        "passwords": {name: os.urandom(12).hex() for name in people},
        # preferred_username is the hub's name; the e-mail differs, so a hub that read
        # another claim would name nobody on the roster.
        "directory": {name: {"sub": os.urandom(8).hex(), "preferred_username": name,
                             "name": name.title(), "email": f"{name}.mail@uni.test"}
                      for name in people},
    }


def lms_description(certificate: Path, key: Path) -> dict[str, Any]:
    """The LMS the tests start (tests/image/lms.py), as JSON-ready data: its address and
    certificate, the tool (the hub) registered with it, its people (the launch's admins
    and students, and IDP_STRANGER) and two courses: the hub's (the admin teaches it, the
    students and the stranger learn in it) and another one, where a roster student
    learns too."""
    people = [TEST_ADMIN, *TEST_STUDENTS, TEST_TARGET, IDP_STRANGER]
    hub = f"https://{TEST_DOMAIN}/hub/lti13"
    return {
        "host": "127.0.0.1", "port": LMS_PORT,
        "certificate": str(certificate), "key": str(key),
        "client_id": "hubkiln-" + os.urandom(4).hex(),
        "deployment_id": "deployment-" + os.urandom(2).hex(),
        "tool_login_url": f"{hub}/oauth_login",
        "tool_redirect_uris": [f"{hub}/oauth_callback"],
        # The hub names people by a custom field (as Canvas's $Canvas.user.loginId or
        # Moodle's $User.username give it); their e-mail differs.
        "people": {name: {"sub": os.urandom(8).hex(), "name": name.title(),
                          "given_name": name.title(), "family_name": "Test",
                          "email": f"{name}.mail@uni.test", "custom": {"username": name}}
                   for name in people},
        "courses": {
            TEST_COURSE: {"label": "CI 101", "title": "The hubkiln course", "members": {
                TEST_ADMIN: "Instructor",
                **{name: "Learner" for name in (*TEST_STUDENTS, TEST_TARGET, IDP_STRANGER)}}},
            OTHER_COURSE: {"label": "OTHER 9", "title": "Another course",
                           "members": {TEST_STUDENTS[0]: "Learner"}},
        },
    }


def lti_launch(lms: dict[str, Any]) -> dict[str, Any]:
    """The launch keys that register the hub as a tool of the tests' LMS, for its course."""
    base = f"https://{lms['host']}:{lms['port']}"
    return {
        "domain": TEST_DOMAIN,
        "oauth": {"client_id": lms["client_id"], "authorize_url": f"{base}/auth",
                  "issuer": base, "jwks_endpoint": f"{base}/jwks",
                  "username_claim": "custom_username", "courses": [TEST_COURSE],
                  "ca_certificate": Path(lms["certificate"]).read_text()},
    }


def oauth_launch(idp: dict[str, Any]) -> dict[str, Any]:
    """The launch keys that point the hub's generic-oauth login at the tests' provider."""
    base = f"https://{idp['host']}:{idp['port']}"
    return {
        "domain": TEST_DOMAIN,
        "oauth": {"client_id": idp["client_id"], "client_secret": idp["client_secret"],
                  "authorize_url": f"{base}/authorize", "token_url": f"{base}/token",
                  "userdata_url": f"{base}/userinfo", "username_claim": "preferred_username",
                  "scope": list(idp["scopes"]),
                  "ca_certificate": Path(idp["certificate"]).read_text()},
    }


def write_private(path: Path, data: dict[str, Any]) -> Path:
    """`data` as JSON in `path`, readable by its owner only."""
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def render_ssh_config(control_dir: Path) -> str:
    """ssh options for a throwaway guest: no host-key bookkeeping, bounded waits, and one
    shared connection per user (pure).

    testinfra asks for ControlMaster=auto but sets no ControlPath, so without one every
    command is a new SSH login: 2.3-2.9 s each under TCG (key exchange, PAM, logind).
    The commands of a test run one after another, so one shared connection stays within
    the hardening's MaxSessions."""
    return (
        "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n  ConnectTimeout 20\n  ServerAliveInterval 15\n"
        "  ServerAliveCountMax 3\n  IdentitiesOnly yes\n"
        f"  ControlPath {control_dir}/%C\n"
    )


@dataclass(frozen=True)
class ValidationMaterial:
    """What one boot of the image is tested with: a throwaway admin key, the launch
    settings with their issued secrets, ssh options, and where reports go."""

    work: Path
    key: Path
    launch_file: Path
    settings: launch.Launch
    credentials_file: Path
    ssh_config: Path
    reports: Path
    junit: Path
    idp_file: Path | None = None
    lms_file: Path | None = None

    def env(self, profile: Profile, logs: Path, ports: dict[int, int], *,
            client_address: str, engine: str) -> dict[str, str]:
        """The environment of tests/image (tests/image/README.md lists each variable)."""
        env = {
            **os.environ,
            "HUBKILN_TEST_ENGINE": engine,
            "HUBKILN_TEST_PROFILE": str(profile.path),
            "HUBKILN_TEST_LAUNCH": str(self.launch_file),
            "HUBKILN_TEST_CREDENTIALS": str(self.credentials_file),
            "HUBKILN_TEST_TARGET": TEST_TARGET,
            "HUBKILN_TEST_CLIENT_ADDRESS": client_address,
            "HUBKILN_TEST_HTTPS_PORT": str(ports[443]),
            "HUBKILN_TEST_HTTP_PORT": str(ports[80]),
            "HUBKILN_TEST_SSH_PORT": str(ports[22]),
            "HUBKILN_TEST_KEY": str(self.key),
            "HUBKILN_TEST_ADMIN": TEST_ADMIN,
            "HUBKILN_TEST_OPERATOR": TEST_OPERATOR,
            "HUBKILN_TEST_STUDENTS": " ".join(TEST_STUDENTS),
            "HUBKILN_TEST_REPORTS": str(self.reports),
            "HUBKILN_TEST_ARTIFACTS": str(logs),
        }
        if BLOCKED_GUEST_PORT in ports:
            env["HUBKILN_TEST_BLOCKED_PORT"] = str(ports[BLOCKED_GUEST_PORT])
        if engine == "container":
            # Only there does the guest share the tests' 127.0.0.1, where they listen.
            if self.idp_file:
                env["HUBKILN_TEST_IDP"] = str(self.idp_file)
            if self.lms_file:
                env["HUBKILN_TEST_LMS"] = str(self.lms_file)
        return env


def prepare_material(work: Path, profile: Profile) -> ValidationMaterial:
    """The material of one boot of an image of `profile` (its settings decide what the
    launch needs besides the admin, the roster and the key), in `work`."""
    key = work / "admin-key"
    public = nocloud.make_ssh_key(key, "hubkiln-validation")
    document = validation_launch_document(public)
    idp_file = lms_file = None
    if profile["tls"]["mode"] == "provided":
        certificate, tls_key = make_certificate(work, "hub", TEST_HOSTNAME)
        document["tls"] = {"certificate": certificate.read_text(), "key": tls_key.read_text()}
    if profile["hub"]["authenticator"] in OAUTH_LOGINS:
        idp = idp_description(*make_certificate(work, "idp", "127.0.0.1"))
        document.update(oauth_launch(idp))
        idp_file = write_private(work / "idp.json", idp)
    if profile["hub"]["authenticator"] == "lti13":
        lms = lms_description(*make_certificate(work, "lms", "127.0.0.1"))
        document.update(lti_launch(lms))
        lms_file = write_private(work / "lms.json", lms)
    launch_file = work / "launch.yaml"
    launch_file.write_text(yaml.safe_dump(document))
    settings, credentials = seed.issue_credentials(launch.load_launch(launch_file))
    # What the guest receives (with the issued hashes): the tests' expected values.
    launch_file.write_text(yaml.safe_dump(settings.data))
    credentials_file = work / "credentials.json"
    credentials_file.write_text(json.dumps({
        "admin_passwords": credentials.admin_passwords,
        "enrolment_codes": credentials.enrolment_codes}))
    credentials_file.chmod(0o600)
    ssh_config = work / "ssh_config"
    (work / "ssh-control").mkdir(mode=0o700)
    ssh_config.write_text(render_ssh_config(work / "ssh-control"))
    reports = work / "reports"
    reports.mkdir()
    return ValidationMaterial(work, key, launch_file, settings, credentials_file, ssh_config,
                              reports, work / "junit.xml", idp_file, lms_file)
