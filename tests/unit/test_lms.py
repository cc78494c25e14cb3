"""tests/image/lms.py, the image tests' simulated LMS (an LTI 1.3 platform), served on
127.0.0.1 with a throwaway CA's certificate and driven as a hub's LTI13Authenticator and a
browser drive it (no VM).

The client trusts only that CA, so every exchange also proves the certificate is served.
The id_token checks follow ltiauthenticator 1.6's LTI13LaunchValidator: the claims its
validate_id_token requires, and an RS256 signature by the key in the JWKS.
"""

from __future__ import annotations

import base64
import html
import json
import re
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from throwaway_tls import server_tls

from hubkiln.config.guest import load_module

lms = load_module("hubkiln_test_lms", Path(__file__).resolve().parents[1] / "image" / "lms.py")

CLIENT_ID = "hubkiln-tool-7f3a"
DEPLOYMENT_ID = "deployment-1"
TOOL_LOGIN = "https://hub.uni.test/hub/lti13/oauth_login"
CALLBACK = "https://hub.uni.test/hub/lti13/oauth_callback"
CALLBACK_WITH_QUERY = "https://hub.uni.test/cb?a=1&b=2"
PEOPLE = {
    "ada": {"sub": "lms-u-1001", "name": "Ada Lovelace", "given_name": "Ada",
            "family_name": "Lovelace", "email": "ada@uni.test", "custom": {"username": "ada"}},
    "tim": {"sub": "lms-u-1002", "name": "Tim Berners", "given_name": "Tim",
            "family_name": "Berners", "email": "tim@uni.test", "custom": {"username": "tim"}},
    "eve": {"sub": "lms-u-1003", "name": "Eve Outsider", "email": "eve@uni.test",
            "custom": {"username": "eve"}},
}
COURSES = {
    "phys-101": {"label": "PHYS101", "title": "Physics I",
                 "members": {"ada": "Learner", "tim": "Instructor"}},
    "math-201": {"label": "MATH201", "title": "Analysis", "members": {"tim": "Learner"},
                 "resource_link_id": "rl-analysis"},
}
HIDDEN_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
FORM = re.compile(r'<form method="post" action="([^"]*)">')
#: The claims ltiauthenticator's validate_id_token requires of a resource link launch
#: (LTI13_RESOURCE_LINK_REQUEST_REQUIRED_CLAIMS, ltiauthenticator/lti13/constants.py).
REQUIRED_CLAIMS = {lms.MESSAGE_TYPE, lms.RESOURCE_LINK, lms.VERSION, lms.DEPLOYMENT_ID,
                   lms.TARGET_LINK_URI, lms.ROLES_CLAIM, "aud", "exp", "iat", "iss", "nonce"}


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and its certificate for 127.0.0.1 (IP SAN), as PEM files."""
    return server_tls(tmp_path_factory.mktemp("tls"), "lms test CA")


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def make_config(tls, **changes):
    fields = {"host": "127.0.0.1", "port": 0, "certificate": tls["certificate"],
              "key": tls["key"], "client_id": CLIENT_ID, "deployment_id": DEPLOYMENT_ID,
              "tool_login_url": TOOL_LOGIN, "tool_redirect_uris": (CALLBACK, CALLBACK_WITH_QUERY),
              "people": PEOPLE, "courses": COURSES}
    return lms.LmsConfig(**{**fields, **changes})


@pytest.fixture
def platform(tls, signing_key):
    with lms.SimulatedLms(make_config(tls), signing_key) as running:
        yield running


@pytest.fixture(scope="module")
def call(tls):
    context = ssl.create_default_context(cafile=str(tls["ca"]))  # trusts only the test CA
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))

    def call(url: str, form: dict | None = None) -> Reply:
        data = urlencode(form).encode() if form is not None else None
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=5) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, error.headers, error.read())

    return call


def auth_params(launch: dict[str, str], **changes: str | None) -> dict[str, str]:
    """The authentication request ltiauthenticator's login handler sends for `launch`
    (changes of None leave a parameter out)."""
    params = {"response_type": "id_token", "scope": "openid", "response_mode": "form_post",
              "prompt": "none", "client_id": launch["client_id"], "redirect_uri": CALLBACK,
              "login_hint": launch["login_hint"], "lti_message_hint": launch["lti_message_hint"],
              "nonce": "n-5e1f", "state": "c3RhdGUtNDI="}
    params.update(changes)
    return {name: value for name, value in params.items() if value is not None}


def authenticate(platform, call, params: dict[str, str], method: str = "GET") -> Reply:
    if method == "GET":
        return call(platform.url("/auth?" + urlencode(params)))
    return call(platform.url("/auth"), params)


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def public_key_of(jwk: dict) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int.from_bytes(b64decode(jwk["e"])),
                                int.from_bytes(b64decode(jwk["n"]))).public_key()


def verified_claims(id_token: str, jwks: dict) -> dict:
    """The token's claims, after checking its RS256 signature with the JWKS key its kid
    names (InvalidSignature when another key signed it)."""
    header_b64, claims_b64, signature = id_token.split(".")
    header = json.loads(b64decode(header_b64))
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    assert header["alg"] == jwk["alg"] == "RS256"
    public_key_of(jwk).verify(b64decode(signature), f"{header_b64}.{claims_b64}".encode(),
                              padding.PKCS1v15(), hashes.SHA256())
    return json.loads(b64decode(claims_b64))


def posted_form(reply: Reply) -> tuple[str, dict[str, str]]:
    """(action, hidden fields) of the auto-submitting page, as the image tests read it."""
    assert reply.status == 200, reply.text
    (action,) = FORM.findall(reply.text)
    return html.unescape(action), dict(HIDDEN_FIELD.findall(reply.text))


# The configuration and the launch


def test_idp_is_shared_under_one_module_name():
    assert sys.modules[lms.IDP_MODULE] is lms._idp
    assert issubclass(lms.SimulatedLms, lms._idp.IdentityProvider)


@pytest.mark.parametrize("changes, message", [
    ({"tool_redirect_uris": ()}, "tool_redirect_uris"),
    ({"tool_redirect_uris": (CALLBACK + "#x",)}, "fragment"),
    ({"tool_login_url": "hub.uni.test/login"}, "tool_login_url"),
    ({"people": {**PEOPLE, "ada": {"name": "Ada"}}}, "'ada' needs a 'sub'"),
    ({"courses": {"c": {"label": "", "title": "T", "members": {}}}}, "label"),
    ({"courses": {"c": {"label": "L", "title": "T", "members": {"bob": "Learner"}}}}, "'bob'"),
    ({"courses": {"c": {"label": "L", "title": "T", "members": {"ada": "Admin"}}}}, "role"),
])
def test_config_refuses_inconsistent_people_and_courses(tls, changes, message):
    with pytest.raises(ValueError, match=message):
        make_config(tls, **changes)


def test_launch_gives_the_third_party_login_parameters(platform):
    launch = platform.launch("ada", "phys-101")
    assert platform.port != 0 and platform.issuer == f"https://127.0.0.1:{platform.port}"
    assert set(launch) == {"iss", "login_hint", "target_link_uri", "lti_message_hint",
                           "client_id", "lti_deployment_id"}
    assert launch["iss"] == platform.issuer and not launch["iss"].endswith("/")
    assert launch["target_link_uri"] == "https://hub.uni.test/hub/"
    assert launch["client_id"] == CLIENT_ID and launch["lti_deployment_id"] == DEPLOYMENT_ID
    for hint in ("login_hint", "lti_message_hint"):  # opaque: nothing of the user in them
        assert len(launch[hint]) >= 32 and "ada" not in launch[hint].lower()
    again = platform.launch("ada", "phys-101", "https://hub.uni.test/hub/spawn")
    assert again["login_hint"] != launch["login_hint"]
    assert again["lti_message_hint"] != launch["lti_message_hint"]
    assert again["target_link_uri"] == "https://hub.uni.test/hub/spawn"
    assert [(e["endpoint"], e["outcome"], e["user"]) for e in platform.events] == [
        ("launch", "issued", "ada")] * 2


@pytest.mark.parametrize("user, course", [("eve", "phys-101"), ("ada", "math-201"),
                                          ("ada", "no-such-course"), ("nobody", "phys-101")])
def test_launch_is_only_for_course_members(platform, user, course):
    with pytest.raises(ValueError, match="member|unknown course"):
        platform.launch(user, course)
    assert platform.events == []


def test_jwks_serves_the_signing_key(platform, call):
    reply = call(platform.url("/jwks"))
    assert reply.status == 200 and reply.headers.get_content_type() == "application/json"
    jwks = json.loads(reply.body)
    assert jwks == platform.jwks
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == platform.kid and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert public_key_of(jwk).public_numbers() == platform.signing_key.public_key(
    ).public_numbers()


# The authentication request and its id_token


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_authentication_posts_a_signed_launch_to_the_tool(platform, call, method):
    launch = platform.launch("ada", "phys-101")
    reply = authenticate(platform, call, auth_params(launch), method)
    assert reply.headers.get_content_type() == "text/html"
    assert reply.headers["Cache-Control"] == "no-store"
    action, fields = posted_form(reply)
    assert action == CALLBACK and set(fields) == {"id_token", "state"}
    assert fields["state"] == "c3RhdGUtNDI="
    assert "document.forms[0].submit()" in reply.text  # a browser submits it on load

    claims = verified_claims(fields["id_token"], json.loads(call(platform.url("/jwks")).body))
    assert claims.keys() >= REQUIRED_CLAIMS
    assert claims["iss"] == platform.issuer
    assert claims["aud"] == CLIENT_ID and claims["azp"] == CLIENT_ID  # aud: one string
    assert claims["sub"] == "lms-u-1001" and claims["nonce"] == "n-5e1f"
    assert claims["exp"] - claims["iat"] == 300
    assert {claims[name] for name in ("name", "given_name", "family_name", "email")} == {
        "Ada Lovelace", "Ada", "Lovelace", "ada@uni.test"}
    assert claims[lms.MESSAGE_TYPE] == "LtiResourceLinkRequest"
    assert claims[lms.VERSION] == "1.3.0"
    assert claims[lms.DEPLOYMENT_ID] == DEPLOYMENT_ID
    assert claims[lms.TARGET_LINK_URI] == launch["target_link_uri"]
    assert claims[lms.RESOURCE_LINK]["id"]
    assert claims[lms.ROLES_CLAIM] == [lms.LEARNER]
    assert claims[lms.CONTEXT] == {
        "id": "phys-101", "label": "PHYS101", "title": "Physics I",
        "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]}
    assert claims[lms.CUSTOM] == {"username": "ada"}
    assert "custom" not in claims

    assert platform.events[-1] == {
        "endpoint": "auth", "outcome": "id_token", "method": method, "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK, "user": "ada", "course": "phys-101", "nonce": "n-5e1f"}


@pytest.mark.parametrize("user, course, role", [
    ("tim", "phys-101", lms.INSTRUCTOR), ("tim", "math-201", lms.LEARNER),
    ("ada", "phys-101", lms.LEARNER)])
def test_roles_follow_the_course_membership(platform, call, user, course, role):
    launch = platform.launch(user, course, "https://hub.uni.test/hub/spawn")
    _, fields = posted_form(authenticate(platform, call, auth_params(launch)))
    claims = verified_claims(fields["id_token"], platform.jwks)
    assert claims[lms.ROLES_CLAIM] == [role]
    assert claims[lms.CONTEXT]["id"] == course and claims[lms.CUSTOM] == {"username": user}
    assert claims[lms.TARGET_LINK_URI] == "https://hub.uni.test/hub/spawn"
    assert claims[lms.RESOURCE_LINK]["id"] == COURSES[course].get("resource_link_id",
                                                                  f"{course}-jupyterhub")


def test_a_redirect_uri_with_a_query_is_escaped_in_the_form(platform, call):
    launch = platform.launch("ada", "phys-101")
    reply = authenticate(platform, call, auth_params(launch, redirect_uri=CALLBACK_WITH_QUERY))
    assert 'action="https://hub.uni.test/cb?a=1&amp;b=2"' in reply.text
    assert posted_form(reply)[0] == CALLBACK_WITH_QUERY


def test_pyjwt_accepts_the_id_token(platform, call):
    """As ltiauthenticator's verify_and_decode_jwt decodes it (PyJWT, its dependency)."""
    jwt = pytest.importorskip(
        "jwt", reason="PyJWT is not installed in .venv; the signature is checked with "
                      "cryptography in test_authentication_posts_a_signed_launch_to_the_tool")
    launch = platform.launch("tim", "phys-101")
    _, fields = posted_form(authenticate(platform, call, auth_params(launch)))
    key = jwt.PyJWKSet.from_dict(platform.jwks)[platform.kid].key
    claims = jwt.decode(fields["id_token"], key, audience=CLIENT_ID, issuer=platform.issuer,
                        algorithms=["RS256"])
    assert claims[lms.ROLES_CLAIM] == [lms.INSTRUCTOR]


# Refusals: a plain 400, never a form


def _refused(reply: Reply) -> None:
    assert reply.status == 400, reply.text
    assert reply.headers.get_content_type() == "text/plain"
    assert "<form" not in reply.text and "eyJ" not in reply.text  # no token


@pytest.mark.parametrize("changes, outcome", [
    ({"client_id": "other-tool"}, "bad-client"),
    ({"client_id": None}, "bad-client"),
    ({"redirect_uri": "https://evil.test/hub/lti13/oauth_callback"}, "bad-redirect-uri"),
    ({"redirect_uri": CALLBACK + "/"}, "bad-redirect-uri"),
    ({"response_type": "code"}, "bad-response-type"),
    ({"scope": "profile"}, "bad-scope"),
    ({"response_mode": "query"}, "bad-response-mode"),
    ({"response_mode": None}, "bad-response-mode"),
    ({"prompt": "login"}, "bad-prompt"),
    ({"nonce": None}, "missing-nonce"),
    ({"nonce": ""}, "missing-nonce"),
])
def test_a_wrong_request_is_refused_and_leaves_the_launch_usable(platform, call, changes,
                                                                 outcome):
    launch = platform.launch("ada", "phys-101")
    _refused(authenticate(platform, call, auth_params(launch, **changes)))
    assert platform.events[-1]["outcome"] == outcome and platform.events[-1]["user"] is None
    posted_form(authenticate(platform, call, auth_params(launch)))  # the hints still work


def test_scope_may_carry_more_than_openid(platform, call):
    launch = platform.launch("ada", "phys-101")
    posted_form(authenticate(platform, call, auth_params(launch, scope="email openid")))


@pytest.mark.parametrize("login_hint", ["never-issued", "", None])
def test_an_unknown_login_hint_is_refused(platform, call, login_hint):
    launch = platform.launch("ada", "phys-101")
    _refused(authenticate(platform, call, auth_params(launch, login_hint=login_hint)))
    assert platform.events[-1]["outcome"] == "unknown-login-hint"


def test_a_login_hint_is_single_use(platform, call):
    params = auth_params(platform.launch("ada", "phys-101"))
    posted_form(authenticate(platform, call, params))
    _refused(authenticate(platform, call, params, "POST"))
    assert platform.events[-1]["outcome"] == "unknown-login-hint"


def test_a_mismatched_message_hint_is_refused_and_spends_the_launch(platform, call):
    launch = platform.launch("ada", "phys-101")
    other = platform.launch("tim", "phys-101")
    for hint in (other["lti_message_hint"], None):
        wrong = auth_params(launch, lti_message_hint=hint)
        _refused(authenticate(platform, call, wrong))
        launch = platform.launch("ada", "phys-101")
    assert [e["outcome"] for e in platform.events if e["endpoint"] == "auth"] == [
        "bad-message-hint"] * 2
    assert platform.events[-2]["user"] == "ada"
    _refused(authenticate(platform, call, wrong | {"lti_message_hint": ""}))
    assert platform.events[-1]["outcome"] == "unknown-login-hint"


def test_an_expired_launch_is_refused(tls, signing_key, call):
    with lms.SimulatedLms(make_config(tls, launch_lifetime=0.0), signing_key) as platform:
        _refused(authenticate(platform, call, auth_params(platform.launch("ada", "phys-101"))))
        assert platform.events[-1]["outcome"] == "expired-login-hint"


def test_unknown_paths_are_404(platform, call):
    assert call(platform.url("/")).status == 404
    assert call(platform.url("/jwks"), {"a": "b"}).status == 404


# Tokens for hostile tests


def test_id_token_for_signs_with_the_lms_key_and_takes_overrides(platform):
    token = platform.id_token_for("tim", "phys-101", "n-1", aud=["a", CLIENT_ID],
                                  email=lms.OMIT, **{lms.ROLES_CLAIM: [lms.LEARNER]})
    claims = verified_claims(token, platform.jwks)
    assert claims["aud"] == ["a", CLIENT_ID] and claims["azp"] == CLIENT_ID
    assert "email" not in claims and claims[lms.ROLES_CLAIM] == [lms.LEARNER]
    assert claims["nonce"] == "n-1" and claims[lms.CONTEXT]["id"] == "phys-101"
    assert claims[lms.TARGET_LINK_URI] == "https://hub.uni.test/hub/"
    with pytest.raises(ValueError):
        platform.id_token_for("eve", "phys-101", "n-1")


@pytest.mark.parametrize("kid", [None, "lms"])
def test_a_forged_token_does_not_verify_with_the_jwks_key(platform, kid):
    claims = platform.claims_for("ada", "phys-101", "n-2")
    forged = lms.forged_token(claims, platform.kid if kid else None)
    header = json.loads(b64decode(forged.split(".")[0]))
    assert header["alg"] == "RS256"
    assert json.loads(b64decode(forged.split(".")[1])) == claims
    if kid:  # it names the LMS's key, but another key signed it
        assert header["kid"] == platform.kid
        with pytest.raises(InvalidSignature):
            verified_claims(forged, platform.jwks)
    else:  # a key the JWKS does not hold
        assert header["kid"] != platform.kid
        with pytest.raises(ValueError):
            verified_claims(forged, platform.jwks)
        jwk = {**platform.jwks["keys"][0], "kid": header["kid"]}
        with pytest.raises(InvalidSignature):
            verified_claims(forged, {"keys": [jwk]})
