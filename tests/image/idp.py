"""A small OAuth2 / OpenID Connect identity provider for the image tests.

The image tests start it on the test host so that a booted hub's `generic-oauth` login
(OAuthenticator's GenericOAuthenticator, 17.x) can log students in end to end, and then read
`provider.events` to assert what the hub asked for.

It implements the authorization code flow over HTTPS: discovery
(`/.well-known/openid-configuration`), a login form (`GET`/`POST /authorize`), the token
endpoint (`POST /token`, client_secret_basic or client_secret_post; PKCE S256/plain when the
client sends a challenge, as OAuthenticator 17 does by default), `GET /userinfo` (only the
claims the granted scopes allow) and the signing key (`GET /jwks`, RS256 ID tokens).

Limits, made for tests: one client, in-memory codes and tokens, no consent screen, no refresh
tokens, no logout, IPv4 addresses or host names only. An ID token is issued on every
successful exchange (with or without the `openid` scope). OAuthenticator sends its Basic
credentials without the form-encoding RFC 6749 2.3.1 asks for, which this provider decodes:
give the client an id and a secret without `%` or `+` (`secrets.token_urlsafe` is fine).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
import secrets
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger(__name__)

SUPPORTED_SCOPES = ("openid", "profile", "email")
#: The claims each scope allows (beyond `sub`, always given).
SCOPE_CLAIMS = {"profile": ("preferred_username", "name"), "email": ("email", "email_verified")}
PKCE_METHODS = ("S256", "plain")
#: The authorization request's parameters the login form carries to its POST.
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "state", "scope", "nonce",
                    "code_challenge", "code_challenge_method")
MAX_BODY = 64 * 1024
LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Test identity provider</title></head>
<body><h1>Sign in</h1>{error}
<form method="post" action="/authorize">
{hidden}
<label>User name <input name="username" autocomplete="username" autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit" id="sign-in">Sign in</button>
</form></body></html>
"""


@dataclass(frozen=True)
class IdpConfig:
    """The provider's one client and its directory: `directory` maps a login name to its
    claims (`sub` required), `passwords` a login name to its password."""

    host: str
    port: int
    certificate: Path
    key: Path
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    directory: dict[str, dict[str, str]]
    passwords: dict[str, str]
    code_lifetime: float = 60.0
    token_lifetime: float = 300.0

    def __post_init__(self) -> None:
        if not self.redirect_uris or any("#" in uri for uri in self.redirect_uris):
            raise ValueError("redirect_uris: at least one, none with a fragment")
        for name, claims in self.directory.items():
            if name not in self.passwords or "sub" not in claims:
                raise ValueError(f"directory user {name!r} needs a password and a 'sub' claim")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    user: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float


@dataclass(frozen=True)
class AccessGrant:
    user: str
    scopes: tuple[str, ...]
    expires_at: float


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint, used as its `kid`."""
    numbers = public_key.public_numbers()
    members = {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e), "kid": kid,
            "alg": "RS256", "use": "sig"}


def sign_jwt(claims: Mapping[str, Any], private_key: rsa.RSAPrivateKey, kid: str) -> str:
    """A compact JWS of `claims`, signed RS256."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    segments = [b64url(json.dumps(part, separators=(",", ":")).encode())
                for part in (header, claims)]
    signing_input = ".".join(segments).encode("ascii")
    signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """(client_id, client_secret) of an `Authorization: Basic` header, each form-decoded
    (RFC 6749 2.3.1); None when there is no such header or it is malformed."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if colon else None


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header, else None."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def claims_for_scopes(user_claims: Mapping[str, Any], scopes: Iterable[str]) -> dict[str, Any]:
    """`sub`, plus the user's claims that the scopes allow (email_verified defaults true)."""
    scopes = set(scopes)
    claims: dict[str, Any] = {"sub": user_claims["sub"]}
    if "email" in scopes and "email" in user_claims:
        claims["email_verified"] = True
    for scope in sorted(scopes & SCOPE_CLAIMS.keys()):
        claims.update({name: user_claims[name] for name in SCOPE_CLAIMS[scope]
                       if name in user_claims})
    return claims


def add_query(url: str, params: Mapping[str, str | None]) -> str:
    """`url` with `params` (None values left out) appended to the query it already has."""
    parts = urlsplit(url)
    extra = urlencode({key: value for key, value in params.items() if value is not None})
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def pkce_matches(verifier: str | None, challenge: str | None, method: str) -> bool:
    """Whether the token request's code_verifier answers the code's challenge (RFC 7636 4.6);
    a code issued without a challenge needs none."""
    if challenge is None:
        return True
    if verifier is None:
        return False
    computed = b64url(hashlib.sha256(verifier.encode()).digest()) if method == "S256" else verifier
    return hmac.compare_digest(computed.encode(), challenge.encode())


def parse_scopes(scope: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys((scope or "").split()))


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def text_response(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


def json_response(status: int, payload: Mapping[str, Any],
                  headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json",
                    (("Cache-Control", "no-store"), ("Pragma", "no-cache"), *headers))


class IdentityProvider:
    """The provider; `start()` (or `with`) serves it on `port`, `events` tells what happened.

    Each event is a dict with `endpoint` and `outcome`, and per endpoint:
    - authorize: method, client_id, redirect_uri, scope (requested, a list), user, and pkce
      (the challenge method or None) when the request was valid; outcome "code",
      "bad-password", "bad-client", "bad-redirect-uri", "bad-response-type" or "bad-pkce";
    - token: client_id (None when refused), auth_method; with "tokens": user and scope
      (granted), with "invalid_grant": reason; else "invalid_client", "unsupported_grant_type";
    - userinfo: user and claims (the names returned); outcome "claims" or "invalid_token".
    """

    def __init__(self, config: IdpConfig, signing_key: rsa.RSAPrivateKey | None = None) -> None:
        self.config = config
        self.port = config.port
        self.signing_key = signing_key or rsa.generate_private_key(65537, 2048)
        self.kid = jwk_thumbprint(self.signing_key.public_key())
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._codes: dict[str, AuthorizationCode] = {}
        self._spent_codes: dict[str, str | None] = {}  # code -> the access token it gave
        self._tokens: dict[str, AccessGrant] = {}
        self._server: _TlsServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/.well-known/openid-configuration"): self._discovery,
            ("GET", "/authorize"): self._show_login,
            ("POST", "/authorize"): self._submit_login,
            ("POST", "/token"): self._token,
            ("GET", "/userinfo"): self._userinfo,
            ("GET", "/jwks"): lambda request: json_response(200, self.jwks),
        }

    @property
    def issuer(self) -> str:
        return f"https://{self.config.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [public_jwk(self.signing_key.public_key(), self.kid)]}

    @property
    def events(self) -> list[dict[str, Any]]:
        """A snapshot of what happened, oldest first."""
        with self._lock:
            return list(self._events)

    def start(self) -> IdentityProvider:
        """Listen (on a free port when the config's is 0) and serve in a daemon thread."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.config.certificate, self.config.key)
        self._server = _TlsServer((self.config.host, self.config.port), self, context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="idp", daemon=True)  # stop() waits one poll
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, request: Request) -> Response:
        route = self._routes.get((request.method, request.path))
        return route(request) if route else text_response(404, "not found")

    def _record(self, endpoint: str, outcome: str, **details: Any) -> None:
        with self._lock:
            self._events.append({"endpoint": endpoint, "outcome": outcome, **details})

    def _discovery(self, request: Request) -> Response:
        return json_response(200, {
            "issuer": self.issuer, "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"), "userinfo_endpoint": self.url("/userinfo"),
            "jwks_uri": self.url("/jwks"), "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"], "scopes_supported": list(SUPPORTED_SCOPES),
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "code_challenge_methods_supported": list(PKCE_METHODS),
        })

    def _refusal(self, params: Mapping[str, str]) -> tuple[str, str] | None:
        """(outcome, message) when the authorization request must be refused outright."""
        if params.get("client_id") != self.config.client_id:
            return "bad-client", "unknown client_id"
        if params.get("redirect_uri") not in self.config.redirect_uris:
            return "bad-redirect-uri", "redirect_uri is not registered for this client"
        if params.get("response_type") != "code":
            return "bad-response-type", "only response_type=code is supported"
        if "code_challenge" in params and params.get("code_challenge_method",
                                                     "plain") not in PKCE_METHODS:
            return "bad-pkce", "code_challenge_method must be S256 or plain"
        return None

    def _authorize(self, method: str, params: Mapping[str, str],
                   respond: Callable[[], Response]) -> Response:
        """Refuse a bad request (400, recorded), else give `respond()`'s answer."""
        refusal = self._refusal(params)
        if refusal:
            self._record("authorize", refusal[0], method=method, user=None,
                         client_id=params.get("client_id"),
                         redirect_uri=params.get("redirect_uri"),
                         scope=list(parse_scopes(params.get("scope"))))
            return text_response(400, refusal[1])
        return respond()

    def _login_page(self, params: Mapping[str, str], error: str = "") -> Response:
        hidden = "\n".join(
            f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
            for name in AUTHORIZE_PARAMS if name in params)
        notice = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        page = LOGIN_PAGE.format(error=notice, hidden=hidden)
        return Response(200, page.encode(), "text/html; charset=utf-8",
                        (("Cache-Control", "no-store"),))

    def _show_login(self, request: Request) -> Response:
        return self._authorize("GET", request.query, lambda: self._login_page(request.query))

    def _submit_login(self, request: Request) -> Response:
        return self._authorize("POST", request.form, lambda: self._check_login(request.form))

    def _check_login(self, form: Mapping[str, str]) -> Response:
        user = form.get("username", "")
        scopes = parse_scopes(form.get("scope"))
        event = {"method": "POST", "client_id": form["client_id"],
                 "redirect_uri": form["redirect_uri"], "scope": list(scopes), "user": user,
                 "pkce": form.get("code_challenge_method", "plain")
                 if "code_challenge" in form else None}
        if user not in self.config.directory or not _same(form.get("password"),
                                                          self.config.passwords[user]):
            self._record("authorize", "bad-password", **event)
            return self._login_page(form, "Wrong user name or password.")
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = AuthorizationCode(
                form["client_id"], form["redirect_uri"], user, scopes, form.get("nonce"),
                form.get("code_challenge"), form.get("code_challenge_method", "plain"),
                time.monotonic() + self.config.code_lifetime)
        self._record("authorize", "code", **event)
        location = add_query(form["redirect_uri"], {"code": code, "state": form.get("state")})
        return Response(302, headers=(("Location", location), ("Cache-Control", "no-store")))

    def _authenticate_client(self, request: Request) -> tuple[str | None, str]:
        """(the client id when its credentials are right, else None; the method used)."""
        basic = parse_basic_auth(request.headers.get("Authorization"))
        client_id, secret = basic or (request.form.get("client_id"),
                                      request.form.get("client_secret"))
        method = "client_secret_basic" if basic else "client_secret_post"
        right = client_id == self.config.client_id and _same(secret, self.config.client_secret)
        return (client_id if right else None), method

    def _redeem(self, form: Mapping[str, str]) -> tuple[AuthorizationCode | None, str]:
        """The code's grant when it may be exchanged, else None and why not. A code is
        spent by its first exchange, right or wrong; its reuse revokes its token."""
        code = form.get("code", "")
        with self._lock:
            if code in self._spent_codes:
                self._tokens.pop(self._spent_codes[code] or "", None)
                return None, "code-reused"
            grant = self._codes.pop(code, None)
            if grant is None:
                return None, "unknown-code"
            self._spent_codes[code] = None
        if grant.expires_at <= time.monotonic():
            return None, "code-expired"
        if form.get("redirect_uri") != grant.redirect_uri:
            return None, "redirect-uri-mismatch"
        if not pkce_matches(form.get("code_verifier"), grant.code_challenge,
                            grant.code_challenge_method):
            return None, "pkce-mismatch"
        return grant, "ok"

    def _token(self, request: Request) -> Response:
        client_id, auth_method = self._authenticate_client(request)
        event: dict[str, Any] = {"client_id": client_id, "auth_method": auth_method}
        if client_id is None:
            self._record("token", "invalid_client", **event)
            return json_response(401, {"error": "invalid_client"},
                                 (("WWW-Authenticate", 'Basic realm="idp"'),))
        if request.form.get("grant_type") != "authorization_code":
            self._record("token", "unsupported_grant_type", **event)
            return json_response(400, {"error": "unsupported_grant_type"})
        grant, reason = self._redeem(request.form)
        if grant is None:
            self._record("token", "invalid_grant", reason=reason, **event)
            return json_response(400, {"error": "invalid_grant"})
        granted = tuple(scope for scope in grant.scopes if scope in SUPPORTED_SCOPES)
        access_token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[access_token] = AccessGrant(
                grant.user, granted, time.monotonic() + self.config.token_lifetime)
            self._spent_codes[request.form["code"]] = access_token
        now = int(time.time())
        claims = {**claims_for_scopes(self.config.directory[grant.user], granted),
                  "iss": self.issuer, "aud": client_id, "iat": now,
                  "exp": now + int(self.config.token_lifetime)}
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        self._record("token", "tokens", user=grant.user, scope=list(granted), **event)
        return json_response(200, {
            "access_token": access_token, "token_type": "Bearer",
            "expires_in": int(self.config.token_lifetime), "scope": " ".join(granted),
            "id_token": sign_jwt(claims, self.signing_key, self.kid)})

    def _userinfo(self, request: Request) -> Response:
        token = parse_bearer(request.headers.get("Authorization"))
        with self._lock:
            grant = self._tokens.get(token or "")
        if grant is None or grant.expires_at <= time.monotonic():
            self._record("userinfo", "invalid_token", user=None, claims=[])
            return json_response(401, {"error": "invalid_token"},
                                 (("WWW-Authenticate", 'Bearer error="invalid_token"'),))
        claims = claims_for_scopes(self.config.directory[grant.user], grant.scopes)
        self._record("userinfo", "claims", user=grant.user, claims=sorted(claims))
        return json_response(200, claims)


class _TlsServer(ThreadingHTTPServer):
    """Each connection's TLS handshake runs in its own request thread, so a silent client
    cannot stall the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: IdentityProvider,
                 context: ssl.SSLContext) -> None:
        self.provider = provider
        self.context = context
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: it resolves the name
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake with %s failed: %s", client_address, error)
            return
        with tls:
            self.RequestHandlerClass(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _TlsServer
    server_version = "hubkiln-test-idp"

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(text_response(400, "bad Content-Length"))
            return
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        target = urlsplit(self.path)
        request = Request(self.command, target.path, _fields(target.query),
                          _fields(body.decode("utf-8", "replace")), self.headers)
        try:
            response = self.server.provider.handle(request)
        except Exception:
            log.exception("%s %s failed", self.command, target.path)
            response = text_response(500, "internal error")
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

