"""The OAuth 2 / OpenID Connect login (`hub.authenticator: generic-oauth`), end to end
against a provider the tests run (tests/image/idp.py; the validation points the launch's
`oauth` at it: hubkiln/validation/material.py, and the tests/variants/generic-oauth.yaml
variant boots it).

The provider knows the roster, the admin and a stranger. What is proven: the hub asks
the provider for the launch's scopes, with its client, over HTTPS it verifies with the
launch's `oauth.ca_certificate`, and names users by the launch's `username_claim`
(the provider's e-mail claim differs, so a hub reading another claim would admit
nobody); roster students log in and get a server (the whole container share logs in
so), the admin is mapped to the hub's admin, and a student is not; the stranger, whom
the provider vouches for, gets 403 and no account; a callback the provider never
issued (a forged code, or no state cookie: a login started in another browser) logs
nobody in.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from hubkiln.validation.material import IDP_STRANGER


@pytest.fixture(scope="module")
def provider(settings: dict[str, Any], idp):
    if settings["authenticator"] != "generic-oauth":
        pytest.skip(f"the settings log in with {settings['authenticator']}, not through an "
                    "OAuth provider (tests/variants/generic-oauth.yaml)")
    if idp is None:
        pytest.skip("needs the tests' login provider (HUBKILN_TEST_IDP): `invoke validate` "
                    "starts one in the container engine")
    return idp


def test_a_roster_student_logs_in_with_the_launchs_scopes_and_claim(provider, student,
                                                                    launch):
    grants = [event for event in provider.events
              if event["endpoint"] == "token" and event["outcome"] == "tokens"
              and event.get("user") == student.name]
    assert grants, f"the provider issued no token for {student.name}: {provider.events}"
    asked = [event for event in provider.events if event["endpoint"] == "authorize"
             and event.get("user") == student.name and event["outcome"] == "code"]
    assert asked and set(asked[-1]["scope"]) == set(launch["oauth"]["scope"]), asked
    # the hub read the user info (not only the ID token) and named the student by it
    assert any(event["endpoint"] == "userinfo" and event.get("user") == student.name
               for event in provider.events)
    status, model = student.client.api(f"/hub/api/users/{student.name}")
    assert status == 200 and model["name"] == student.name
    assert model["admin"] is False


def test_the_admin_is_the_hubs_admin(admin_client, provider, journal):
    name, client = admin_client
    status, _, _, _ = client.get("/hub/admin", follow=False)
    assert status == 200, f"{name} logged in through the provider but is no admin" + journal(
        "jupyterhub.service")
    status, model = client.api(f"/hub/api/users/{name}")
    assert status == 200 and model["admin"] is True, model


def test_a_student_is_not_an_admin(provider, student):
    status, _, _, _ = student.client.get("/hub/admin", follow=False)
    assert status == 403


def test_a_stranger_the_provider_vouches_for_is_refused(provider, provider_pages, hub_client,
                                                        admin_client, launch):
    assert IDP_STRANGER not in {*launch["users"], *launch["admins"]}
    stranger = hub_client()
    status, _, text = provider_pages.sign_in(stranger, provider, IDP_STRANGER)
    assert status == 403, f"{IDP_STRANGER}, off the roster, got HTTP {status}: {text[:300]}"
    assert stranger.cookie("jupyterhub-hub-login") is None
    # the provider did vouch for the stranger: the hub refused, not the provider
    assert any(event["endpoint"] == "userinfo" and event.get("user") == IDP_STRANGER
               for event in provider.events)
    status, _ = admin_client[1].api(f"/hub/api/users/{IDP_STRANGER}")
    assert status == 404, "the hub keeps an account of the refused stranger"


def test_a_forged_callback_logs_nobody_in(provider, provider_pages, hub_client):
    client = hub_client()
    status, headers, _ = client.request("GET", "/hub/oauth_login")
    assert status == 302
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["Location"]).query)
    # a code the provider never issued, with the right state
    status, _, _ = client.request(
        "GET", f"/hub/oauth_callback?code=forged&state={query['state'][0]}")
    assert status >= 400 and client.cookie("jupyterhub-hub-login") is None, status
    # a real code, but the login began in another browser (no state cookie here)
    name = next(iter(provider.config.passwords))
    callback = provider_pages.callback(hub_client(), provider, name)
    other = hub_client()
    status, _, _ = other.request("GET", callback)
    assert status >= 400 and other.cookie("jupyterhub-hub-login") is None, status
