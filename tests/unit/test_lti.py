"""hubkiln_lti: the LTI 1.3 login's rules on a checked launch (the course, the admin, the
group) and what an LMS needs of the hub's pages and cookies. The booted image's launch
from a simulated LMS is tests/image/test_login_lti.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado import web

from hubkiln.config.guest import load_module

FILES = Path(__file__).resolve().parents[2] / "provision" / "files" / "hub"
lti = load_module("hubkiln_lti", FILES / "hubkiln_lti.py")
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"


def launch(roles, context=None, **claims):
    token = {lti.ROLES_CLAIM: roles, "email": "ada@uni.example", **claims}
    if context is not None:
        token[lti.CONTEXT_CLAIM] = context
    return token


@pytest.mark.parametrize(("roles", "instructor"), [
    ([lti.INSTRUCTOR], True),
    (["Instructor"], True),  # the short form LTI allows
    ([LEARNER, f"{lti.INSTRUCTOR_SUBROLES}TeachingAssistant"], True),
    ([LEARNER], False),
    (["http://purl.imsglobal.org/vocab/lis/v2/institution/person#Instructor"], False),
    (["http://purl.imsglobal.org/vocab/lis/v2/membership#Mentor"], False),
    ([], False),
    ([None, 3], False),
])
def test_only_the_courses_instructors_are_instructors(roles, instructor):
    # An institution-wide "Instructor" teaches some course, not necessarily this one.
    assert lti.is_instructor(roles) is instructor


@pytest.mark.parametrize(("context", "group"), [
    ({"id": "c-1", "label": "OPT 101", "title": "Optimization"}, "course-opt-101"),
    ({"id": "8f2-A"}, "course-8f2-a"),
    ({"id": "", "label": "  "}, None),
    ({}, None),
])
def test_a_course_becomes_one_group(context, group):
    assert lti.course_group(context) == group


def test_the_lms_frames_the_hub_from_its_own_origin():
    assert lti.frame_ancestors({"issuer": "https://moodle.uni.example/lms"}) == [
        "https://moodle.uni.example"]
    given = {"issuer": "https://canvas.instructure.com",
             "frame_ancestors": ["https://uni.instructure.com"]}
    assert lti.frame_ancestors(given) == ["https://uni.instructure.com"]
    assert lti.content_security_policy(["https://a.example", "https://b.example:8443"]) == \
        "frame-ancestors 'self' https://a.example https://b.example:8443"


def authenticate(courses, token):
    cls = lti.HubkilnLTI13Authenticator
    authenticator = cls(courses=set(courses), username_key="email")
    return asyncio.run(authenticator.authenticate(SimpleNamespace(), token))


def test_an_instructor_is_admin_and_joins_the_courses_group():
    model = authenticate([], launch([lti.INSTRUCTOR], {"id": "c-1", "label": "OPT"}))
    assert (model["name"], model["admin"], model["groups"]) == ("ada@uni.example", True,
                                                                ["course-opt"])


def test_a_learner_is_never_admin():
    model = authenticate(["c-1"], launch([LEARNER], {"id": "c-1"}))
    assert model["admin"] is False and model["groups"] == ["course-c-1"]


@pytest.mark.parametrize("context", [{"id": "c-2", "label": "OTHER"}, None])
def test_a_launch_from_another_course_is_refused(context):
    with pytest.raises(web.HTTPError) as refused:
        authenticate(["c-1"], launch([lti.INSTRUCTOR], context))
    assert refused.value.status_code == 403


def test_the_lms_root_is_trusted_for_its_key_set(tmp_path, monkeypatch):
    import jwt
    from ltiauthenticator.lti13 import validator

    monkeypatch.setattr(validator, "jwt", jwt)
    made = []
    monkeypatch.setattr(lti.ssl, "create_default_context",
                        lambda cafile=None: made.append(cafile) or "a-context")
    lti.trust_lms_root(tmp_path / "root.crt")
    client = validator.jwt.PyJWKClient("https://lms.example/jwks")
    assert made == [str(tmp_path / "root.crt")] and client.ssl_context == "a-context"
    assert validator.jwt.decode is jwt.decode  # the rest of PyJWT is PyJWT's
