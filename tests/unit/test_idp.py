"""tests/image/idp.py, the image tests' identity provider, served on 127.0.0.1 with a
throwaway CA's certificate and driven as the hub's OAuthenticator drives it (no VM).

The client trusts only that CA, so every exchange also proves the certificate is served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from throwaway_tls import server_tls

from hubkiln.config.guest import load_module

idp = load_module("hubkiln_test_idp", Path(__file__).resolve().parents[1] / "image" / "idp.py")

CLIENT_ID = "hubkiln-hub"
CLIENT_SECRET = "s3cr3t-Kx_9-value"
CALLBACK = "https://hub.uni.test/hub/oauth_callback"
CALLBACK_WITH_QUERY = "https://hub.uni.test/cb?tenant=a%20b"
PASSWORD = "correct horse battery"
STUDENT = {"sub": "u-1f3a9c", "preferred_username": "student1",
           "email": "student1.mail@uni.test", "name": "Student One"}


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the test reads the 302 itself


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and its certificate for 127.0.0.1 (IP SAN), as PEM files."""
    return server_tls(tmp_path_factory.mktemp("tls"), "idp test CA")


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def client_context(tls) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls["ca"]))  # trusts only the test CA


def make_config(tls, **changes) -> idp.IdpConfig:
    fields = {"host": "127.0.0.1", "port": 0, "certificate": tls["certificate"],
              "key": tls["key"], "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
              "redirect_uris": (CALLBACK, CALLBACK_WITH_QUERY),
              "directory": {"student1": STUDENT}, "passwords": {"student1": PASSWORD}}
    return idp.IdpConfig(**{**fields, **changes})


@pytest.fixture
def provider(tls, signing_key):
    with idp.IdentityProvider(make_config(tls), signing_key) as running:
        yield running


@pytest.fixture
def call(client_context):
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=client_context),
        _NoRedirect())

    def call(url: str, form: dict | None = None, headers: dict | None = None) -> Reply:
        data = urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with opener.open(request, timeout=5) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, error.headers, error.read())

    return call


def authorize_params(redirect_uri: str = CALLBACK, scope: str = "openid profile email",
                     **extra: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect_uri,
            "state": "st-42", "scope": scope, **extra}


def log_in(provider, call, password: str = PASSWORD, **params: str) -> Reply:
    form = {**authorize_params(**params), "username": "student1", "password": password}
    return call(provider.url("/authorize"), form)


def code_of(reply: Reply) -> str:
    assert reply.status == 302, reply.body
    return parse_qs(urlsplit(reply.headers["Location"]).query)["code"][0]


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def exchange(provider, call, code: str, redirect_uri: str = CALLBACK, **extra: str) -> Reply:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            **extra}
    return call(provider.url("/token"), form, basic())


def userinfo(provider, call, token: str) -> Reply:
    return call(provider.url("/userinfo"), headers={"Authorization": f"Bearer {token}"})


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verified_claims(id_token: str, jwks: dict) -> dict:
    """The ID token's claims, after checking its RS256 signature with the JWKS key."""
    header_b64, claims_b64, signature = id_token.split(".")
    header = json.loads(b64decode(header_b64))
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    assert header["alg"] == jwk["alg"] == "RS256"
    public_key = rsa.RSAPublicNumbers(int.from_bytes(b64decode(jwk["e"])),
                                      int.from_bytes(b64decode(jwk["n"]))).public_key()
    public_key.verify(b64decode(signature), f"{header_b64}.{claims_b64}".encode(),
                      padding.PKCS1v15(), hashes.SHA256())
    return json.loads(b64decode(claims_b64))


class FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form: dict[str, str] = {}
        self.inputs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.form = values
        elif tag == "input":
            self.inputs[values["name"]] = values.get("value", "")


def read_form(page: bytes) -> FormReader:
    reader = FormReader()
    reader.feed(page.decode())
    return reader


# The pure helpers


def test_basic_auth_is_form_decoded_as_rfc_6749_says():
    header = "Basic " + base64.b64encode(b"my%3Aclient:se+cr%25et").decode()
    assert idp.parse_basic_auth(header) == ("my:client", "se cr%et")
    assert idp.parse_basic_auth(basic()["Authorization"]) == (CLIENT_ID, CLIENT_SECRET)
    for bad in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"x").decode()):
        assert idp.parse_basic_auth(bad) is None, bad


def test_claims_follow_the_scopes():
    assert idp.claims_for_scopes(STUDENT, ["openid"]) == {"sub": "u-1f3a9c"}
    assert idp.claims_for_scopes(STUDENT, ["openid", "profile"]) == {
        "sub": "u-1f3a9c", "preferred_username": "student1", "name": "Student One"}
    assert idp.claims_for_scopes(STUDENT, ["email"]) == {
        "sub": "u-1f3a9c", "email": "student1.mail@uni.test", "email_verified": True}


def test_query_is_appended_to_the_one_the_uri_has():
    assert idp.add_query("https://h/cb", {"code": "a b", "state": None}) == "https://h/cb?code=a+b"
    assert idp.add_query("https://h/cb?x=1", {"code": "c"}) == "https://h/cb?x=1&code=c"


def test_jwk_and_jwt_round_trip(signing_key):
    kid = idp.jwk_thumbprint(signing_key.public_key())
    jwk = idp.public_jwk(signing_key.public_key(), kid)
    assert {jwk["kty"], jwk["alg"], jwk["use"]} == {"RSA", "RS256", "sig"}
    assert "=" not in jwk["n"] + jwk["e"] and b64decode(jwk["e"]) == b"\x01\x00\x01"
    token = idp.sign_jwt({"sub": "x"}, signing_key, kid)
    assert verified_claims(token, {"keys": [jwk]}) == {"sub": "x"}
    forged = token.rsplit(".", 1)[0] + "." + idp.b64url(b"\0" * 256)
    with pytest.raises(InvalidSignature):
        verified_claims(forged, {"keys": [jwk]})


def test_pkce_s256_and_plain():
    verifier = "v" * 50
    challenge = idp.b64url(hashlib.sha256(verifier.encode()).digest())
    assert idp.pkce_matches(verifier, challenge, "S256")
    assert not idp.pkce_matches("w" * 50, challenge, "S256")
    assert not idp.pkce_matches(None, challenge, "S256")
    assert idp.pkce_matches(verifier, verifier, "plain")
    assert idp.pkce_matches(None, None, "plain")  # no challenge, no verifier needed


def test_config_refuses_a_user_without_password(tls):
    with pytest.raises(ValueError, match="student1"):
        make_config(tls, passwords={})


# The served provider


def test_discovery_document_names_the_bound_port(provider, call):
    reply = call(provider.url("/.well-known/openid-configuration"))
    document = reply.json()
    assert provider.port != 0
    assert document["issuer"] == provider.issuer == f"https://127.0.0.1:{provider.port}"
    assert document["authorization_endpoint"] == provider.issuer + "/authorize"
    assert document["token_endpoint"] == provider.issuer + "/token"
    assert document["userinfo_endpoint"] == provider.issuer + "/userinfo"
    assert document["jwks_uri"] == provider.issuer + "/jwks"
    assert document["response_types_supported"] == ["code"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post"}
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])


def test_a_client_without_the_test_ca_refuses_the_certificate(provider):
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(provider.url("/jwks"), context=ssl.create_default_context(),
                               timeout=5)


def test_code_flow_with_basic_auth(provider, call):
    page = call(provider.url("/authorize?" + urlencode(authorize_params(nonce="n-7"))))
    assert page.status == 200 and page.headers.get_content_type() == "text/html"
    form = read_form(page.body)
    assert form.form["method"] == "post" and form.form["action"] == "/authorize"
    assert form.inputs["state"] == "st-42" and form.inputs["redirect_uri"] == CALLBACK
    assert {"username", "password"} <= form.inputs.keys()

    login = call(provider.url("/authorize"),
                 {**form.inputs, "username": "student1", "password": PASSWORD})
    location = urlsplit(login.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    assert parse_qs(location.query)["state"] == ["st-42"]

    tokens = exchange(provider, call, code_of(login))
    assert tokens.status == 200
    assert tokens.headers.get_content_type() == "application/json"
    assert tokens.headers["Cache-Control"] == "no-store"
    body = tokens.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"].split() == ["openid", "profile", "email"]

    claims = verified_claims(body["id_token"], call(provider.url("/jwks")).json())
    assert claims["iss"] == provider.issuer and claims["aud"] == CLIENT_ID
    assert claims["sub"] == STUDENT["sub"] and claims["nonce"] == "n-7"
    assert claims["iat"] < claims["exp"] and claims["email"] == STUDENT["email"]

    info = userinfo(provider, call, body["access_token"])
    assert info.json() == {**STUDENT, "email_verified": True}
    assert [(e["endpoint"], e["outcome"]) for e in provider.events] == [
        ("authorize", "code"), ("token", "tokens"), ("userinfo", "claims")]
    authorized, exchanged, _ = provider.events
    assert authorized["scope"] == ["openid", "profile", "email"]
    assert authorized["user"] == "student1" and authorized["redirect_uri"] == CALLBACK
    assert exchanged["auth_method"] == "client_secret_basic"


def test_token_with_form_auth_and_a_redirect_uri_with_a_query(provider, call):
    login = log_in(provider, call, redirect_uri=CALLBACK_WITH_QUERY, scope="openid profile")
    query = parse_qs(urlsplit(login.headers["Location"]).query)
    assert query["tenant"] == ["a b"] and query["state"] == ["st-42"]
    form = {"grant_type": "authorization_code", "code": code_of(login),
            "redirect_uri": CALLBACK_WITH_QUERY, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}
    tokens = call(provider.url("/token"), form)
    assert tokens.status == 200, tokens.body
    assert provider.events[-1]["auth_method"] == "client_secret_post"
    assert "nonce" not in verified_claims(tokens.json()["id_token"], provider.jwks)


def test_wrong_password_shows_the_form_again_without_a_code(provider, call):
    reply = log_in(provider, call, password="wrong")
    assert reply.status == 200 and "Location" not in reply.headers
    assert b"Wrong user name or password" in reply.body and b"code=" not in reply.body
    assert read_form(reply.body).inputs["state"] == "st-42"
    assert provider.events[-1]["outcome"] == "bad-password"
    assert log_in(provider, call, password=PASSWORD.upper()).status == 200


def test_unregistered_redirect_uri_is_refused_without_redirect(provider, call):
    evil = "https://evil.test/hub/oauth_callback"
    shown = call(provider.url("/authorize?" + urlencode(authorize_params(redirect_uri=evil))))
    posted = log_in(provider, call, redirect_uri=CALLBACK + "/x")
    for reply in (shown, posted):
        assert reply.status == 400 and "Location" not in reply.headers
        assert b"redirect_uri" in reply.body
    assert [e["outcome"] for e in provider.events] == ["bad-redirect-uri"] * 2


def test_unknown_client_is_refused(provider, call):
    params = {**authorize_params(), "client_id": "other"}
    reply = call(provider.url("/authorize?" + urlencode(params)))
    assert reply.status == 400 and provider.events[-1]["outcome"] == "bad-client"


def test_wrong_client_secret_is_invalid_client(provider, call):
    code = code_of(log_in(provider, call))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    by_header = call(provider.url("/token"), form, basic(secret="nope"))
    by_form = call(provider.url("/token"),
                   {**form, "client_id": CLIENT_ID, "client_secret": "nope"})
    for reply in (by_header, by_form):
        assert reply.status == 401 and reply.json() == {"error": "invalid_client"}
    assert exchange(provider, call, code).status == 200  # the refusals did not spend it


def test_code_reuse_is_invalid_grant_and_revokes_its_token(provider, call):
    code = code_of(log_in(provider, call))
    first = exchange(provider, call, code)
    second = exchange(provider, call, code)
    assert first.status == 200
    assert second.status == 400 and second.json() == {"error": "invalid_grant"}
    assert provider.events[-1]["reason"] == "code-reused"
    assert userinfo(provider, call, first.json()["access_token"]).status == 401


def test_mismatched_redirect_uri_at_token_is_invalid_grant(provider, call):
    code = code_of(log_in(provider, call))
    reply = exchange(provider, call, code, redirect_uri=CALLBACK_WITH_QUERY)
    assert reply.status == 400 and reply.json() == {"error": "invalid_grant"}
    assert provider.events[-1]["reason"] == "redirect-uri-mismatch"


def test_expired_code_is_invalid_grant(tls, signing_key, call):
    config = make_config(tls, code_lifetime=0.0)
    with idp.IdentityProvider(config, signing_key) as provider:
        reply = exchange(provider, call, code_of(log_in(provider, call)))
        assert reply.status == 400 and provider.events[-1]["reason"] == "code-expired"


def test_pkce_verifier_must_answer_the_challenge(provider, call):
    verifier = "x" * 64
    challenge = idp.b64url(hashlib.sha256(verifier.encode()).digest())
    pkce = {"code_challenge": challenge, "code_challenge_method": "S256"}
    wrong = exchange(provider, call, code_of(log_in(provider, call, **pkce)),
                     code_verifier="y" * 64)
    assert wrong.status == 400 and provider.events[-1]["reason"] == "pkce-mismatch"
    right = exchange(provider, call, code_of(log_in(provider, call, **pkce)),
                     code_verifier=verifier)
    assert right.status == 200 and provider.events[-2]["pkce"] == "S256"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"},
                                     {"Authorization": "Basic " + "x" * 8}])
def test_bad_bearer_token_is_401(provider, call, headers):
    reply = call(provider.url("/userinfo"), headers=headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert provider.events[-1] == {"endpoint": "userinfo", "outcome": "invalid_token",
                                   "user": None, "claims": []}


def test_expired_access_token_is_401(tls, signing_key, call):
    with idp.IdentityProvider(make_config(tls, token_lifetime=0.0), signing_key) as provider:
        tokens = exchange(provider, call, code_of(log_in(provider, call))).json()
        assert userinfo(provider, call, tokens["access_token"]).status == 401


def test_scope_without_email_gives_no_email_claim(provider, call):
    tokens = exchange(provider, call, code_of(log_in(provider, call, scope="openid profile")))
    info = userinfo(provider, call, tokens.json()["access_token"]).json()
    assert info == {"sub": STUDENT["sub"], "preferred_username": "student1",
                    "name": "Student One"}
    assert "email" not in verified_claims(tokens.json()["id_token"], provider.jwks)
    assert provider.events[-1]["claims"] == ["name", "preferred_username", "sub"]


def test_unknown_paths_are_404(provider, call):
    assert call(provider.url("/admin")).status == 404
    assert call(provider.url("/jwks"), {"a": "b"}).status == 404  # POST where only GET is
