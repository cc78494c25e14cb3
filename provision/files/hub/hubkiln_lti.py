"""hubkiln_lti: the LTI 1.3 login's rules: who an LMS launch makes an admin, which
course it lets in and which group it puts the student in, and what the hub's pages
and cookies need so that an LMS can launch it in a frame.

jupyterhub-ltiauthenticator checks the launch itself (the LMS's signature with its
key set, the issuer, the client id, the state and nonce cookies); this module adds
hubkiln's rules on the checked id_token:
- Instructor (and its sub-roles, such as teaching assistant) of the course is a hub
  admin; every other role (Learner, ...) is a student, never an admin;
- a launch from a course the launch settings do not name (`oauth.courses`) is
  refused (403), when they name any;
- the course becomes the student's hub group `course-<label or id>`.
An LTI launch is a cross-site form post, often inside the LMS's page: the hub's
cookies are SameSite=None (and Secure), and its pages and the students' servers
may be framed by the LMS's origins (`oauth.frame_ancestors`, by default the issuer's).

Standard library and the hub's environment only.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROLES_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/roles"
CONTEXT_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/context"
#: Context (course) roles of LTI 1.3 (LIS v2 membership vocabulary), full or short.
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
INSTRUCTOR_SUBROLES = "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#"


def is_instructor(roles: list[Any]) -> bool:
    """Whether the launch's roles make its user an instructor of the course (pure)."""
    return any(isinstance(role, str) and (role in (INSTRUCTOR, "Instructor")
                                          or role.startswith(INSTRUCTOR_SUBROLES))
               for role in roles)


def course_of(token: dict[str, Any]) -> dict[str, Any]:
    """The launch's course (its context claim), {} without one (pure)."""
    context = token.get(CONTEXT_CLAIM)
    return context if isinstance(context, dict) else {}


def course_group(course: dict[str, Any]) -> str | None:
    """The hub group of a course: `course-` and its label (else its id), in lower-case
    letters, digits and dashes (pure). None without a course."""
    name = str(course.get("label") or course.get("id") or "")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"course-{slug}" if slug else None


def origin(url: str) -> str:
    """The web origin of an https URL: https://host[:port] (pure)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def frame_ancestors(oauth: dict[str, Any]) -> list[str]:
    """The origins that may frame the hub: the launch's `oauth.frame_ancestors`, else the
    issuer's origin (an LMS such as Moodle is its own issuer) (pure)."""
    given = oauth.get("frame_ancestors")
    return list(given) if given else [origin(oauth["issuer"])]


def content_security_policy(origins: list[str]) -> str:
    """The Content-Security-Policy of the hub's pages and the students' servers (pure)."""
    return "frame-ancestors " + " ".join(["'self'", *origins])


#: Cookies an LMS's cross-site form post (and its frame) carries back to the hub.
CROSS_SITE_COOKIES = {"samesite": "None", "secure": True}


def server_tornado_settings(origins: list[str]) -> dict[str, Any]:
    """The students' servers' tornado settings for a framed LTI launch: the same policy
    as the hub's, and their _xsrf cookie sent from the LMS's frame too (pure)."""
    return {"headers": {"Content-Security-Policy": content_security_policy(origins)},
            "xsrf_cookie_kwargs": dict(CROSS_SITE_COOKIES)}


def trust_lms_root(root: Path) -> None:
    """Fetch the LMS's key set trusting `root` (the launch's oauth.ca_certificate), for
    an LMS with a private CA. ltiauthenticator builds PyJWT's PyJWKClient itself, with
    no SSL context to give: its validator module gets a `jwt` whose PyJWKClient has one."""
    import jwt
    from ltiauthenticator.lti13 import validator

    context = ssl.create_default_context(cafile=str(root))

    class _Jwt:
        def __getattr__(self, name: str) -> Any:
            return getattr(jwt, name)

        @staticmethod
        def PyJWKClient(uri: str, **options: Any) -> Any:  # noqa: N802 (PyJWT's name)
            return jwt.PyJWKClient(uri, ssl_context=context, **options)

    validator.jwt = _Jwt()


def _authenticator_class() -> type:
    from ltiauthenticator.lti13.auth import LTI13Authenticator
    from tornado import web
    from traitlets import Set, Unicode

    class HubkilnLTI13Authenticator(LTI13Authenticator):
        """LTI13Authenticator with hubkiln's rules: course, admin and group of a launch."""

        courses = Set(Unicode(), config=True,
                      help="The LMS course (context) ids whose launches are let in; "
                           "empty: every course of the deployment.")

        async def authenticate(self, handler: Any, data: dict[str, Any] | None = None
                               ) -> dict[str, Any]:
            token = data or {}
            course = course_of(token)
            if self.courses and course.get("id") not in self.courses:
                raise web.HTTPError(403, "This hub is not open to launches from that course.")
            model = await super().authenticate(handler, token)
            group = course_group(course)
            return {**model, "admin": is_instructor(token.get(ROLES_CLAIM) or []),
                    "groups": [group] if group else []}

    return HubkilnLTI13Authenticator


def __getattr__(name: str) -> Any:
    # The class needs ltiauthenticator (the hub's environment): built when first asked
    # for, so that the pure rules above import anywhere (the build's tests).
    if name == "HubkilnLTI13Authenticator":
        cls = _authenticator_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
