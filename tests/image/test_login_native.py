"""The native login (`hub.authenticator: native`): sign-up, then an admin's approval.

Plays the people a sign-up page invites: a roster student who signs up and tries
to get in before the teacher approved; a stranger off the roster who signs up (and
whom a careless admin approves); someone who signs up with an admin's name; a
student who approves themselves, or whose page makes the admin's browser approve
(the hub and every student's server share one site, so a student's page can load
or link to the approval URL with the admin's cookies). Expected values come from
the launch settings given (the roster, the admins), never from the image.

The approvals here use HUBKILN_TEST_TARGET, the roster student no other test logs
in as; tests/image/test_browser.py walks the same sign-up and approval in a real
browser. Runs on an image whose profile says `native`, or with a settings variant:
`invoke validate --profile=ci --variant=tests/variants/native.yaml`.
"""

from __future__ import annotations

import os

import pytest

#: Strangers: names on no roster and no admin list.
STRANGER = "mallory"
WEAK = "eve"
PASSWORD = "a-long-enough-passphrase-7"


@pytest.fixture(scope="module")
def native(settings):
    if settings["authenticator"] != "native":
        pytest.skip(f"the image's login is {settings['authenticator']}, not native "
                    "(boot it with the variant tests/variants/native.yaml)")
    return settings


@pytest.fixture(scope="module")
def target(native, launch) -> str:
    name = os.environ.get("HUBKILN_TEST_TARGET")
    if not name:
        pytest.skip("needs HUBKILN_TEST_TARGET: a roster student no other test uses")
    assert name in launch["users"], f"{name} is not on the roster given"
    return name


@pytest.fixture(scope="module")
def admin(native, admin_client):
    """The first launch admin's logged-in client."""
    return admin_client[1]


@pytest.fixture(scope="module")
def logs_in(login_form):
    """logs_in(client, name, password): whether the login form lets `name` in (a
    redirect and the hub's login cookie)."""
    def answer(client, name: str, password: str) -> bool:
        status, _, _ = login_form(client, name, password)
        return status == 302 and client.cookie("jupyterhub-hub-login") is not None
    return answer


def test_a_sign_up_waits_for_an_admins_approval(target, admin, hub_client, front, host,
                                                student, journal, native_pages, logs_in,
                                                login_and_start):
    pages = native_pages
    page = pages.sign_up(hub_client(), target, PASSWORD)
    assert "sent to the admin" in page, page[-600:]
    assert pages.approval(admin, target) is False, "a sign-up was approved by itself"
    assert not logs_in(hub_client(), target, PASSWORD), (
        "a roster student got in before any admin approved the sign-up"
        + journal("jupyterhub.service"))

    # A student approves themselves: the approval needs the admin's rights.
    own = student.client.request("GET", f"/hub/authorize/{target}",
                                 headers={"Referer": front.url("/hub/authorize")})[0]
    assert own in (403, 404), f"a student's request to approve answered HTTP {own}"
    # A student's page makes the admin's browser load the approval link: same site,
    # the admin's cookies, but not from the hub's authorization page.
    for referer in (f"/user/{student.name}/files/approve-me.html", None):
        status = pages.toggle(admin, front, target, referer)
        assert status == 403, f"approval from {referer or 'no page'}: HTTP {status}"
    assert pages.approval(admin, target) is False, (
        "an approval link followed from outside the authorization page approved the "
        "sign-up" + journal("jupyterhub.service"))

    # The teacher presses Authorize on the authorization page: now the student gets in.
    pages.toggle(admin, front, target)
    assert pages.approval(admin, target) is True
    session = login_and_start(hub_client(), target, PASSWORD)
    assert session.name == target
    assert host.user(target).exists, f"{target} has no account after their first start"


def test_a_stranger_who_signs_up_never_gets_in_even_when_approved(
        native, admin, hub_client, front, host, launch, native_pages, logs_in):
    assert STRANGER not in launch["users"] and STRANGER not in launch["admins"]
    native_pages.sign_up(hub_client(), STRANGER, PASSWORD)
    if native_pages.approval(admin, STRANGER) is False:
        native_pages.toggle(admin, front, STRANGER)  # the careless admin
    assert native_pages.approval(admin, STRANGER) is True
    assert not logs_in(hub_client(), STRANGER, PASSWORD), (
        "a sign-up off the roster got in: the roster is the authority")
    assert not host.user(STRANGER).exists, "a stranger's sign-up made a Unix account"
    assert not host.file(f"/home/{STRANGER}").exists


def test_nobody_signs_up_as_an_admin(native, launch, hub_client, credentials, admin,
                                    native_pages, logs_in):
    name = launch["admins"][0]
    native_pages.sign_up(hub_client(), name, PASSWORD)
    assert native_pages.approval(admin, name) is None, "an admin's name was taken by a sign-up"
    assert not logs_in(hub_client(), name, PASSWORD), (
        "the password of a sign-up with the admin's name logs in as the admin")
    assert logs_in(hub_client(), name, credentials.admin_password(name)), (
        "the admin's own password no longer works after a sign-up with their name")


def test_weak_or_mistyped_passwords_are_refused_at_sign_up(native, hub_client, admin,
                                                           native_pages):
    for password, confirmation in (("short", "short"), ("password", "password"),
                                   (PASSWORD, PASSWORD + "x")):
        native_pages.sign_up(hub_client(), WEAK, password, confirmation)
        assert native_pages.approval(admin, WEAK) is None, (
            f"a sign-up with {password!r} / {confirmation!r} was accepted")
