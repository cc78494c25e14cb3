"""The LTI 1.3 login (`hub.authenticator: lti13`), end to end from an LMS the tests run
(tests/image/lms.py; the validation registers the hub with it in the launch's `oauth`:
hubkiln/validation/material.py, and the tests/variants/lti13.yaml variant boots it).

The LMS has the hub's course (the admin teaches it; the roster and a stranger learn
in it) and another course (a roster student learns there too). What is proven: a
launch (the LMS's login initiation, the hub's authentication request, the LMS's signed
id_token posted back) logs a roster student in under the name of the launch's
`username_claim` (their e-mail differs), in the course's group, never an admin; the
course's Instructor is the hub's admin; the stranger, whom the LMS vouches for, gets
403 and no account, and so does a roster student launching from the other course;
a token the LMS never signed, or one posted without the launch's state cookie (from
another browser), logs nobody in; the hub's cookies come back with the LMS's
cross-site post (SameSite=None; Secure) and the LMS may frame the hub and the
student's server (frame-ancestors).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from hubkiln.config.guest import load_module
from hubkiln.validation.material import IDP_STRANGER, OTHER_COURSE, TEST_COURSE


@pytest.fixture(scope="module")
def lms_of(settings: dict[str, Any], lms):
    if settings["authenticator"] != "lti13":
        pytest.skip(f"the settings log in with {settings['authenticator']}, not LTI 1.3 "
                    "(tests/variants/lti13.yaml)")
    if lms is None:
        pytest.skip("needs the tests' LMS (HUBKILN_TEST_LMS): `invoke validate` starts one "
                    "in the container engine")
    return lms


@pytest.fixture(scope="module")
def lms_module():
    return load_module("hubkiln_test_lms", Path(__file__).with_name("lms.py"))


def test_a_roster_student_is_a_student_of_the_course(lms_of, student, admin_client):
    status, model = admin_client[1].api(f"/hub/api/users/{student.name}")
    assert status == 200, model
    assert model["admin"] is False
    assert model["groups"] == ["course-ci-101"], model  # the course's label, CI 101
    # named by the custom claim: the LMS's e-mail of the student is another name
    launches = [event for event in lms_of.events if event["endpoint"] == "auth"
                and event.get("user") == student.name and event["outcome"] == "id_token"]
    assert launches, lms_of.events


def test_the_courses_instructor_is_the_hubs_admin(lms_of, admin_client, journal):
    name, client = admin_client
    status, _, _, _ = client.get("/hub/admin", follow=False)
    assert status == 200, f"{name}, the course's Instructor, is no hub admin" + journal(
        "jupyterhub.service")
    status, model = client.api(f"/hub/api/users/{name}")
    assert status == 200 and model["admin"] is True


@pytest.mark.parametrize(("name", "course"), [(IDP_STRANGER, TEST_COURSE),
                                              (None, OTHER_COURSE)])
def test_outside_the_roster_or_the_course_is_refused(lms_of, provider_pages, hub_client,
                                                     admin_client, launch, name, course):
    """The stranger learns in the hub's course but is not on the roster; the roster's
    first student also learns in another course, which the hub is not open to."""
    name = name or launch["users"][0]
    client = hub_client()
    status, _, text = provider_pages.launch(client, lms_of, name, course)
    assert status == 403, f"{name}'s launch from {course}: HTTP {status}: {text[:300]}"
    assert client.cookie("jupyterhub-hub-login") is None
    if name == IDP_STRANGER:
        status, _ = admin_client[1].api(f"/hub/api/users/{name}")
        assert status == 404, "the hub keeps an account of the refused stranger"


def test_a_token_the_lms_never_signed_logs_nobody_in(lms_of, lms_module, provider_pages,
                                                     hub_client, launch):
    name = launch["users"][-1]
    client = hub_client()
    action, form = provider_pages.launch_page(client, lms_of, name, TEST_COURSE)
    # the LMS's own claims for this launch (nonce and all), signed with another key
    claims = json.loads(base64.urlsafe_b64decode(form["id_token"].split(".")[1] + "==="))
    forged = lms_module.forged_token(claims, kid=lms_of.kid)
    status, _, _ = client.request("POST", "/hub/lti13/oauth_callback",
                                  form={**form, "id_token": forged},
                                  headers={"Host": action.split("/")[2]})
    assert status in (400, 401, 403), status
    assert client.cookie("jupyterhub-hub-login") is None


def test_a_launch_posted_from_another_browser_logs_nobody_in(lms_of, provider_pages,
                                                            hub_client, launch):
    """The LMS's signed launch, sent by someone who did not start it (no state cookie)."""
    name = launch["users"][-1]
    action, form = provider_pages.launch_page(hub_client(), lms_of, name, TEST_COURSE)
    other = hub_client()
    status, _, _ = other.request("POST", "/hub/lti13/oauth_callback", form=form,
                                 headers={"Host": action.split("/")[2]})
    assert status == 400, status
    assert other.cookie("jupyterhub-hub-login") is None


def test_the_hubs_cookies_come_back_with_the_lmss_post(lms_of, hub_client, launch):
    client = hub_client()
    domain = {"Host": lms_of.config.tool_login_url.split("/")[2]}
    status, _, _ = client.request("POST", "/hub/lti13/oauth_login",
                                        form=lms_of.launch(launch["users"][0], TEST_COURSE),
                                        headers=domain)
    assert status == 302
    cookies = client.last_set_cookies
    state = [line for line in cookies if line.startswith("lti13authenticator-state=")]
    assert state, cookies
    assert re.search(r";\s*SameSite=None", state[0], re.I) and re.search(
        r";\s*Secure", state[0], re.I), state[0]


def test_the_lms_may_frame_the_hub_and_the_students_server(lms_of, student, hub_client):
    allowed = f"frame-ancestors 'self' {lms_of.issuer}"
    _, headers, _, _ = hub_client().get("/hub/login")
    assert headers.get("Content-Security-Policy", "").startswith(allowed), headers
    _, headers, _, _ = student.client.get(f"/user/{student.name}/lab")
    assert allowed in headers.get("Content-Security-Policy", ""), headers
