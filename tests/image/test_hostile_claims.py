"""A stranger who knows the names: nobody claims an admin, nobody claims a student without
their enrolment code, and guessing one name is locked after a few tries.

Plays the hostile visitor of the login form (from the host, through the front). The
expected behaviour comes from the launch settings the guest was given and the
secrets issued with them (`credentials`, hubkiln.config.launch.issue_credentials), never
from the image. Each refusal is paired with the proof that the stand-in is real: the
right secret does let the same name in.
"""

from __future__ import annotations

import os

import pytest

from hubkiln.config.guest import auth as guest_auth

WRONG = "hubkiln-hostile-guess-1"


@pytest.fixture(scope="module")
def target(settings) -> str:
    """The roster student nobody else logs in as (HUBKILN_TEST_TARGET)."""
    if settings["authenticator"] != "firstuse":
        pytest.skip("the claim tests drive the firstuse form")
    name = os.environ.get("HUBKILN_TEST_TARGET")
    if not name:
        pytest.skip("needs HUBKILN_TEST_TARGET: a roster student no other test uses")
    return name


def admin_page(client) -> int:
    status, _, _, _ = client.get("/hub/admin", follow=False)
    return status


def test_a_stranger_cannot_claim_the_admin(launch, settings, hub_client, login_form,
                                           credentials, host, journal):
    """The first visitor who types the admin's name and any password does not become it;
    the admin's own password (issued at launch) does. With either form login: firstuse
    refuses with 403, the native login page shows its error (200); neither logs in."""
    admins = list(launch.get("admins") or [])
    if not admins:
        pytest.skip("no admin in the launch settings")
    name = admins[0]
    password = credentials.admin_password(name)
    stranger = hub_client()
    status, _, text = login_form(stranger, name, "any-first-use-password")
    refused = {"firstuse": 403, "native": 200}.get(settings["authenticator"], 403)
    assert status == refused and stranger.cookie("jupyterhub-hub-login") is None, (
        f"a stranger's first login as admin {name} got HTTP {status}: "
        f"{text[:300]}" + journal("jupyterhub.service"))
    assert admin_page(stranger) != 200
    again = hub_client()
    status, headers, _ = login_form(again, name, password)
    assert status == 302, (f"the admin's issued password was refused (HTTP {status}) after a "
                           "stranger tried: the stranger's attempt must not have set it"
                           + journal("jupyterhub.service"))
    assert admin_page(again) == 200, "the admin logged in but cannot open /hub/admin"
    if settings["authenticator"] != "firstuse":
        return  # the native login keeps no first-use passwords (sign-ups: test_login_native)
    # Nothing the stranger typed was stored as a first-use password for the admin.
    stored = host.run("/opt/hubkiln/hub/bin/python -c \"import dbm; "
                      "db = dbm.open('/home/.hubkiln/hub/passwords.dbm', 'r'); "
                      f"print(b'{name}' in db.keys())\"")
    assert stored.stdout.strip() in ("False", ""), stored.stdout + stored.stderr


def test_a_stranger_cannot_claim_a_student_without_the_code(target, hub_client, login_form,
                                                            credentials, journal):
    """Knowing a roster name is not enough: the first login needs that student's
    enrolment code; a wrong one and another student's are refused; the right one works
    once and is then spent."""
    code = credentials.enrolment_codes.get(target)
    if not code:
        pytest.skip(f"no enrolment code issued for {target} (enrolment_codes off?)")
    others = [c for n, c in credentials.enrolment_codes.items() if n != target]
    attempts = [("no code", ""), ("a wrong code", "AAAA-BBBB-CCCC")]
    attempts += [("another student's code", others[0])] if others else []
    for what, guess in attempts:
        status, _, text = login_form(hub_client(), target, WRONG, guess)
        assert status == 403, (f"{target} claimed with {what}: HTTP {status} {text[:200]}"
                               + journal("jupyterhub.service"))
    # The student, typing the code as people do (lower case, spaces), gets in.
    typed = code.lower().replace("-", " ")
    status, _, text = login_form(hub_client(), target, "the-real-students-password", typed)
    assert status == 302, (f"{target}'s own code was refused: HTTP {status} {text[:200]}"
                           + journal("jupyterhub.service"))
    # Spent: the same code does not set a new password, the chosen one stays.
    status, _, _ = login_form(hub_client(), target, "a-strangers-new-password", code)
    assert status == 403, "a spent enrolment code set another password"
    status, _, _ = login_form(hub_client(), target, "the-real-students-password")
    assert status == 302, "the student's chosen password no longer works"


def test_guessing_one_name_is_locked(target, hub_client, login_form, journal):
    """After the allowed failures a name is refused even with its right password, and the
    hub's log says so (an admin reads it: journalctl -u jupyterhub | grep 'login locked')."""
    limit = guest_auth().MAX_FAILURES
    for _ in range(limit):
        status, _, _ = login_form(hub_client(), target, WRONG)
        assert status == 403
    status, _, text = login_form(hub_client(), target, "the-real-students-password")
    assert status == 403, (f"{target} was not locked after {limit} failed logins "
                           f"(HTTP {status})" + journal("jupyterhub.service"))
    assert "Too many failed logins" in text
    log = journal("jupyterhub.service", 400)
    assert f"login locked for {target}" in log, log[-2000:]
