"""The material of one validation boot (hubkiln/validation/material.py): the launch
settings a profile's options need, checked as `invoke seed` would check them."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from hubkiln.config.launch import check_launch_for_profile, load_launch
from hubkiln.config.profile import load_profile
from hubkiln.paths import PROJECT_DIR
from hubkiln.validation import material

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or
                                shutil.which("ssh-keygen") is None,
                                reason="needs openssl and ssh-keygen")
VARIANTS = PROJECT_DIR / "tests" / "variants"


def made(tmp_path, ref):
    profile = load_profile(str(ref))
    work = tmp_path / "work"
    work.mkdir()
    found = material.prepare_material(work, profile)
    launch = load_launch(found.launch_file)
    assert check_launch_for_profile(launch, profile) == []  # as `invoke seed` checks it
    return found, launch.data


def test_the_ci_profile_needs_only_the_admin_the_roster_and_the_key(tmp_path):
    found, launch = made(tmp_path, "ci")
    assert launch["admins"] == ["teacher"] and launch["tls"] is None and launch["oauth"] is None
    assert found.idp_file is None
    assert "HUBKILN_TEST_IDP" not in found.env(load_profile("ci"), tmp_path, {
        22: 22, 80: 80, 443: 443}, client_address="127.0.0.1", engine="container")


def test_a_provided_certificate_is_made_for_the_launch(tmp_path):
    _, launch = made(tmp_path, VARIANTS / "tls-provided.yaml")
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"],
                          input=launch["tls"]["certificate"], capture_output=True, text=True,
                          check=True).stdout
    assert "DNS:hubkiln-test" in text
    assert "PRIVATE KEY" in launch["tls"]["key"]


def test_an_oauth_login_gets_a_provider_and_its_client(tmp_path):
    found, launch = made(tmp_path, VARIANTS / "generic-oauth.yaml")
    idp = json.loads(found.idp_file.read_text())
    oauth = launch["oauth"]
    assert (oauth["client_id"], oauth["client_secret"]) == (idp["client_id"],
                                                           idp["client_secret"])
    assert oauth["authorize_url"] == f"https://127.0.0.1:{material.IDP_PORT}/authorize"
    assert oauth["ca_certificate"].strip() == material.Path(idp["certificate"]).read_text().strip()
    assert idp["redirect_uris"] == [f"https://{launch['domain']}/hub/oauth_callback"]
    # everyone the hub admits is known to the provider, and one stranger besides
    known = set(idp["directory"])
    assert {*launch["admins"], *launch["users"]} < known
    assert material.IDP_STRANGER in known - {*launch["admins"], *launch["users"]}
    # the provider's secrets stay out of the guest's launch file
    assert "passwords" not in yaml.safe_dump(launch)
    assert found.idp_file.stat().st_mode & 0o077 == 0
    # the provider listens where the container's guest reaches it, not the VM's
    profile = load_profile(str(VARIANTS / "generic-oauth.yaml"))
    ports = {22: 22, 80: 80, 443: 443}
    assert found.env(profile, tmp_path, ports, client_address="127.0.0.1",
                     engine="container")["HUBKILN_TEST_IDP"] == str(found.idp_file)
    assert "HUBKILN_TEST_IDP" not in found.env(profile, tmp_path, ports,
                                               client_address="10.0.2.2", engine="vm")


def test_the_certificate_command_names_the_host_and_localhost():
    command = material.certificate_command(material.Path("k"), material.Path("c"), "h")
    assert command[-1] == "subjectAltName=DNS:h,IP:127.0.0.1"


def test_an_lti_login_gets_an_lms_and_the_hubs_registration(tmp_path):
    found, launch = made(tmp_path, VARIANTS / "lti13.yaml")
    lms = json.loads(found.lms_file.read_text())
    oauth = launch["oauth"]
    assert oauth["issuer"] == f"https://127.0.0.1:{material.LMS_PORT}"
    assert oauth["client_id"] == lms["client_id"] and oauth["courses"] == [material.TEST_COURSE]
    assert lms["tool_redirect_uris"] == [f"https://{launch['domain']}/hub/lti13/oauth_callback"]
    course = lms["courses"][material.TEST_COURSE]["members"]
    assert course[launch["admins"][0]] == "Instructor"
    assert {course[name] for name in launch["users"]} == {"Learner"}
    # a roster student learns in another course too; the stranger only in the hub's
    other = lms["courses"][material.OTHER_COURSE]["members"]
    assert set(other) & set(launch["users"]) and material.IDP_STRANGER not in other
    ports = {22: 22, 80: 80, 443: 443}
    profile = load_profile(str(VARIANTS / "lti13.yaml"))
    assert found.env(profile, tmp_path, ports, client_address="127.0.0.1",
                     engine="container")["HUBKILN_TEST_LMS"] == str(found.lms_file)
