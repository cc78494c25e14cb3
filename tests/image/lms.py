"""A simulated LMS, an LTI 1.3 platform, for the image tests.

The image tests start it on the test host so that a booted hub's `lti13` login
(jupyterhub-ltiauthenticator 1.6's LTI13Authenticator) can log people in end to end, and then
read `lms.events` to assert what the hub asked for.

The flow, as the IMS Security Framework 1.0 (5.1.1) and LTI 1.3 describe it:

1. Third-party-initiated login: `launch(user, course)` gives the parameters (`iss`,
   `login_hint`, `target_link_uri`, `lti_message_hint`, `client_id`, `lti_deployment_id`)
   that the LMS's course page would POST to the tool's login URL; the test client POSTs them
   to the hub's `/hub/lti13/oauth_login` itself.
2. The hub answers with a redirect to this LMS's `/auth` (GET, or POST), an OIDC
   authentication request: response_type=id_token, scope=openid, response_mode=form_post,
   prompt=none, the client_id, a redirect_uri, the login_hint and lti_message_hint back,
   a nonce and a state. The LMS checks it and answers with a page whose form, submitted on
   load, POSTs a signed `id_token` (RS256, an LtiResourceLinkRequest) and the `state` to the
   redirect_uri, the hub's `/hub/lti13/oauth_callback`.
3. The hub checks the token's signature with `GET /jwks`, and its claims.

A refused authentication request gets a plain 400, never a form: this LMS posts to no
redirect_uri but the registered ones.

Limits, made for tests: one tool (client id and deployment), in-memory launches, resource
link launches only (no deep linking, no names and roles or grades services), no platform
login (a launch names its user), no key rotation, IPv4 addresses or host names only. It is
built on tests/image/idp.py's serving half (HTTPS server, routing, events, JWT signing).
"""

from __future__ import annotations

import html
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from hubkiln.config.guest import load_module

#: The name both this module and tests/image/conftest.py load idp.py as.
IDP_MODULE = "hubkiln_test_idp"
_idp = sys.modules.get(IDP_MODULE) or load_module(IDP_MODULE, Path(__file__).with_name("idp.py"))

# Context roles (LTI 1.3 A.2.2), the ones a course member has here.
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
ROLES = {"Instructor": INSTRUCTOR, "Learner": LEARNER}
COURSE_OFFERING = "http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"

# The LTI message claims (LTI 1.3 5.3 and 5.4).
_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
MESSAGE_TYPE = _CLAIM + "message_type"
VERSION = _CLAIM + "version"
DEPLOYMENT_ID = _CLAIM + "deployment_id"
TARGET_LINK_URI = _CLAIM + "target_link_uri"
RESOURCE_LINK = _CLAIM + "resource_link"
ROLES_CLAIM = _CLAIM + "roles"
CONTEXT = _CLAIM + "context"
CUSTOM = _CLAIM + "custom"

RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"
LTI_VERSION = "1.3.0"
TOKEN_LIFETIME = 300
PAGE_HEADERS = (("Cache-Control", "no-store"),)
#: The page that posts the authentication response to the tool (form_post response mode).
FORM_POST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Test LMS</title></head>
<body><p>Opening the tool...</p>
<form method="post" action="{action}">
{hidden}
<noscript><button type="submit">Continue</button></noscript>
</form>
<script>document.forms[0].submit();</script>
</body></html>
"""


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: An `id_token_for` override value that leaves the claim out.
OMIT: Any = _Omit()


@dataclass(frozen=True)
class LmsConfig:
    """The LMS's one tool and its people and courses.

    `people` maps a login name to its claims (`sub` required; name, given_name,
    family_name, email as a platform sends them; `custom`, the custom claim's dict, e.g.
    {"username": name}); `courses` maps a context id to {"label", "title", "members":
    {login name: "Instructor" | "Learner"}} and optionally "resource_link_id".
    `tool_login_url` is the tool's OIDC login initiation URL, `tool_redirect_uris` its
    registered launch (redirect) URLs. Port 0 takes a free port.
    """

    host: str
    port: int
    certificate: Path
    key: Path
    client_id: str
    deployment_id: str
    tool_login_url: str
    tool_redirect_uris: tuple[str, ...]
    people: dict[str, dict[str, Any]]
    courses: dict[str, dict[str, Any]]
    launch_lifetime: float = 300.0

    def __post_init__(self) -> None:
        if not self.tool_redirect_uris or any("#" in uri for uri in self.tool_redirect_uris):
            raise ValueError("tool_redirect_uris: at least one, none with a fragment")
        if urlsplit(self.tool_login_url).scheme not in ("https", "http"):
            raise ValueError("tool_login_url: an http(s) URL")
        for name, claims in self.people.items():
            if not claims.get("sub"):
                raise ValueError(f"person {name!r} needs a 'sub' claim")
        for course, details in self.courses.items():
            if not details.get("label") or not details.get("title"):
                raise ValueError(f"course {course!r} needs a label and a title")
            for name, role in details.get("members", {}).items():
                if name not in self.people or role not in ROLES:
                    raise ValueError(f"course {course!r}: member {name!r} must be a person, "
                                     f"with a role of {sorted(ROLES)}")


@dataclass(frozen=True)
class PendingLaunch:
    """A launch `launch()` issued, until an authentication request redeems it."""

    user: str
    course: str
    lti_message_hint: str
    target_link_uri: str
    expires_at: float


def forged_token(claims: Mapping[str, Any], kid: str | None = None) -> str:
    """`claims` signed RS256 with a fresh key, not the LMS's: a token the hub must refuse.
    `kid` defaults to the fresh key's thumbprint; give the LMS's to impersonate its key."""
    key = rsa.generate_private_key(65537, 2048)
    return _idp.sign_jwt(claims, key, kid or _idp.jwk_thumbprint(key.public_key()))


class SimulatedLms(_idp.IdentityProvider):
    """The LMS; `start()` (or `with`) serves it on `port`, `events` tells what happened.

    It keeps idp.IdentityProvider's serving half (start/stop/with, `port`, `issuer`,
    `url()`, `jwks`, `events`, `signing_key`, `kid`, routing), with its own routes:
    `GET /jwks` and `GET`/`POST /auth`.

    Each event is a dict with `endpoint` and `outcome`:
    - launch: user, course, login_hint; outcome "issued" (launch() itself, no request);
    - auth: method, client_id, redirect_uri, user and course (None until the login_hint
      is known), nonce; outcome "id_token", or "bad-client", "bad-redirect-uri",
      "bad-response-type", "bad-scope", "bad-response-mode", "bad-prompt", "missing-nonce",
      "unknown-login-hint" (never issued, or already used), "expired-login-hint",
      "bad-message-hint". A login_hint is spent by the first request that gets as far as
      presenting it, right or wrong.
    """

    config: LmsConfig

    def __init__(self, config: LmsConfig, signing_key: rsa.RSAPrivateKey | None = None) -> None:
        super().__init__(config, signing_key)  # type: ignore[arg-type]  # duck-typed config
        self._pending: dict[str, PendingLaunch] = {}
        self._routes = {
            ("GET", "/jwks"): lambda request: _idp.json_response(200, self.jwks),
            ("GET", "/auth"): lambda request: self._authenticate("GET", request.query),
            ("POST", "/auth"): lambda request: self._authenticate("POST", request.form),
        }

    def start(self) -> SimulatedLms:
        super().start()
        if self._thread is not None:
            self._thread.name = "lms"
        return self

    def __enter__(self) -> SimulatedLms:
        return self.start()

    @property
    def default_target_link_uri(self) -> str:
        """The hub's home: the tool login URL's origin + /hub/."""
        parts = urlsplit(self.config.tool_login_url)
        return f"{parts.scheme}://{parts.netloc}/hub/"

    def _membership(self, user: str, course: str) -> str:
        """The user's role name in the course; ValueError when they are not a member."""
        if course not in self.config.courses:
            raise ValueError(f"unknown course {course!r}")
        role = self.config.courses[course].get("members", {}).get(user)
        if role is None:
            raise ValueError(f"{user!r} is not a member of course {course!r}")
        return role

    def launch(self, user: str, course: str,
               target_link_uri: str | None = None) -> dict[str, str]:
        """The third-party-initiated login's parameters for `user` opening the tool in
        `course` (ValueError unless a member): POST them, form-encoded, to the tool's login
        URL. The login_hint and lti_message_hint are opaque, random and single use."""
        self._membership(user, course)
        target = target_link_uri or self.default_target_link_uri
        login_hint, message_hint = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self._lock:
            self._pending[login_hint] = PendingLaunch(
                user, course, message_hint, target,
                time.monotonic() + self.config.launch_lifetime)
        self._record("launch", "issued", user=user, course=course, login_hint=login_hint)
        return {"iss": self.issuer, "login_hint": login_hint, "target_link_uri": target,
                "lti_message_hint": message_hint, "client_id": self.config.client_id,
                "lti_deployment_id": self.config.deployment_id}

    def claims_for(self, user: str, course: str, nonce: str,
                   target_link_uri: str | None = None) -> dict[str, Any]:
        """The id_token's claims for `user` launching the tool in `course` (ValueError
        unless a member), answering the authentication request that sent `nonce`."""
        role = self._membership(user, course)
        person = dict(self.config.people[user])
        custom = person.pop("custom", {})
        details = self.config.courses[course]
        now = int(time.time())
        return {
            **person,
            "iss": self.issuer, "aud": self.config.client_id, "azp": self.config.client_id,
            "sub": person["sub"], "iat": now, "exp": now + TOKEN_LIFETIME, "nonce": nonce,
            MESSAGE_TYPE: RESOURCE_LINK_REQUEST, VERSION: LTI_VERSION,
            DEPLOYMENT_ID: self.config.deployment_id,
            TARGET_LINK_URI: target_link_uri or self.default_target_link_uri,
            RESOURCE_LINK: {"id": details.get("resource_link_id", f"{course}-jupyterhub")},
            ROLES_CLAIM: [ROLES[role]],
            CONTEXT: {"id": course, "label": details["label"], "title": details["title"],
                      "type": [COURSE_OFFERING]},
            CUSTOM: dict(custom),
        }

    def id_token_for(self, user: str, course: str, nonce: str, **overrides: Any) -> str:
        """An id_token as this LMS signs it, with `overrides` replacing claims (OMIT as a
        value leaves the claim out). Claim URLs go through a dict: **{lms.ROLES_CLAIM: []}."""
        claims = {**self.claims_for(user, course, nonce), **overrides}
        return self.sign({name: value for name, value in claims.items() if value is not OMIT})

    def sign(self, claims: Mapping[str, Any]) -> str:
        """`claims` signed with the LMS's key (RS256, its `kid` in the header)."""
        return _idp.sign_jwt(claims, self.signing_key, self.kid)

    def _auth_refusal(self, params: Mapping[str, str]) -> tuple[str, str] | None:
        """(outcome, message) when the authentication request is wrong before its hints."""
        if params.get("client_id") != self.config.client_id:
            return "bad-client", "unknown client_id"
        if params.get("redirect_uri") not in self.config.tool_redirect_uris:
            return "bad-redirect-uri", "redirect_uri is not registered for this tool"
        if params.get("response_type") != "id_token":
            return "bad-response-type", "response_type must be id_token"
        if "openid" not in (params.get("scope") or "").split():
            return "bad-scope", "scope must include openid"
        if params.get("response_mode") != "form_post":
            return "bad-response-mode", "response_mode must be form_post"
        if params.get("prompt") != "none":
            return "bad-prompt", "prompt must be none"
        if not params.get("nonce"):
            return "missing-nonce", "a nonce is required"
        return None

    def _redeem_launch(self, params: Mapping[str, str]) -> tuple[PendingLaunch | None, str]:
        """The launch the hints name, spending it, else None and the outcome."""
        with self._lock:
            pending = self._pending.pop(params.get("login_hint") or "", None)
        if pending is None:
            return None, "unknown-login-hint"
        if pending.expires_at <= time.monotonic():
            return None, "expired-login-hint"
        if not _idp._same(params.get("lti_message_hint"), pending.lti_message_hint):
            return pending, "bad-message-hint"
        return pending, "id_token"

    def _authenticate(self, method: str, params: Mapping[str, str]) -> _idp.Response:
        event: dict[str, Any] = {
            "method": method, "client_id": params.get("client_id"),
            "redirect_uri": params.get("redirect_uri"), "user": None, "course": None,
            "nonce": params.get("nonce")}
        refusal = self._auth_refusal(params)
        if refusal:
            self._record("auth", refusal[0], **event)
            return _idp.text_response(400, refusal[1])
        pending, outcome = self._redeem_launch(params)
        if pending is not None:
            event.update(user=pending.user, course=pending.course)
        if pending is None or outcome != "id_token":
            self._record("auth", outcome, **event)
            message = {"unknown-login-hint": "unknown or already used login_hint",
                       "expired-login-hint": "the launch has expired",
                       "bad-message-hint": "lti_message_hint does not match the login_hint"}
            return _idp.text_response(400, message[outcome])
        claims = self.claims_for(pending.user, pending.course, params["nonce"],
                                 pending.target_link_uri)
        self._record("auth", outcome, **event)
        return self._form_post(params["redirect_uri"],
                               {"id_token": self.sign(claims), "state": params.get("state", "")})

    @staticmethod
    def _form_post(action: str, fields: Mapping[str, str]) -> _idp.Response:
        hidden = "\n".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
            for name, value in fields.items())
        page = FORM_POST_PAGE.format(action=html.escape(action), hidden=hidden)
        return _idp.Response(200, page.encode(), "text/html; charset=utf-8", PAGE_HEADERS)
