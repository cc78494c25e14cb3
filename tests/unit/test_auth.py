"""hubkiln_auth's authenticators with the image's own JupyterHub login stack, no VM.

The classes are built as the hub builds them (traitlets config, as in
jupyterhub_config.py) and driven with the form data a browser sends. Plays the
stranger who knows the names: the image tests prove the same end to end.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from hubkiln.config.guest import load_module as load

PROJECT = Path(__file__).resolve().parents[2]
HUB_FILES = PROJECT / "provision" / "files" / "hub"


auth = load("hubkiln_auth", HUB_FILES / "hubkiln_auth.py")
ADMIN_PASSWORD = "the-admins-issued-password"
CODE = "K7QM-4XPA-9RTW"


def firstuse(tmp_path: Path, monkeypatch, *, codes: bool = True):
    monkeypatch.setattr(auth, "SPENT_CODES", tmp_path / "spent")
    c = Config()
    c.Authenticator.allowed_users = {"alice", "bob", "teacher"}
    c.Authenticator.admin_names = {"teacher"}
    c.Authenticator.admin_password_hashes = {"teacher": auth.hash_secret(ADMIN_PASSWORD,
                                                                          iterations=1000)}
    c.FirstUseAuthenticator.dbm_path = str(tmp_path / "passwords.dbm")
    c.FirstUseAuthenticator.min_password_length = 8
    c.HubkilnFirstUseAuthenticator.enrolment_codes = codes
    c.HubkilnFirstUseAuthenticator.enrolment_code_hashes = {
        "alice": auth.hash_secret(CODE, iterations=1000),
        "bob": auth.hash_secret("BBBB-BBBB-BBBB", iterations=1000)}
    return auth.HubkilnFirstUseAuthenticator(config=c)


def login(authenticator, name: str, password: str, code: str = ""):
    handler = SimpleNamespace(custom_login_error="")
    result = asyncio.run(authenticator.authenticate(
        handler, {"username": name, "password": password, "otp": code}))
    return result, handler.custom_login_error


def test_the_admin_cannot_be_claimed_with_a_first_use_password(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    assert login(hub, "teacher", "any-first-use-password")[0] is None
    assert login(hub, "teacher", "any-first-use-password")[0] is None  # nothing was stored
    assert login(hub, "teacher", ADMIN_PASSWORD)[0] == "teacher"


def test_an_admin_without_a_hash_never_logs_in(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    hub.admin_names = {"teacher", "ta"}
    assert login(hub, "ta", "whatever-password")[0] is None
    assert login(hub, "ta", "whatever-password")[0] is None


def test_a_student_claims_their_name_only_with_their_code(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    assert login(hub, "alice", "strangers-password")[0] is None  # no code
    assert login(hub, "alice", "strangers-password", "AAAA-AAAA-AAAA")[0] is None
    assert login(hub, "alice", "strangers-password", "BBBB-BBBB-BBBB")[0] is None  # bob's
    assert login(hub, "alice", "alices-password", "k7qm 4xpa 9rtw")[0] == "alice"
    # The code is spent: it sets no other password; the chosen one works.
    assert login(hub, "alice", "strangers-password", CODE)[0] is None
    assert login(hub, "alice", "alices-password")[0] == "alice"


def test_a_spent_code_stays_spent_when_the_password_is_reset(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    assert login(hub, "alice", "alices-password", CODE)[0] == "alice"
    hub.delete_user(SimpleNamespace(name="alice"))  # an admin removes the user
    assert login(hub, "alice", "strangers-password", CODE)[0] is None


def test_names_off_the_roster_are_refused_and_store_nothing(tmp_path, monkeypatch):
    import dbm

    hub = firstuse(tmp_path, monkeypatch, codes=False)
    assert login(hub, "mallory", "mallorys-password")[0] is None
    with dbm.open(str(tmp_path / "passwords.dbm"), "c") as db:
        assert db.get(b"mallory") is None
    assert login(hub, "bob", "bobs-password")[0] == "bob"  # codes off: first use sets it


def test_guessing_one_name_locks_it_even_for_the_right_password(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    assert login(hub, "alice", "alices-password", CODE)[0] == "alice"
    for _ in range(auth.MAX_FAILURES):
        assert login(hub, "alice", "a-wrong-guess")[0] is None
    result, message = login(hub, "alice", "alices-password")
    assert result is None and re.match(r"Too many failed logins", message)
    assert login(hub, "bob", "bobs-password", "BBBB-BBBB-BBBB")[0] == "bob"


def test_too_short_a_first_password_is_refused_with_a_message(tmp_path, monkeypatch):
    hub = firstuse(tmp_path, monkeypatch)
    result, message = login(hub, "alice", "short", CODE)
    assert result is None and "at least 8" in message
    assert login(hub, "alice", "long-enough", CODE)[0] == "alice"  # the code was not spent


def test_native_sign_ups_wait_for_approval_and_admins_cannot_sign_up(tmp_path, monkeypatch):
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    c = Config()
    c.Authenticator.allowed_users = {"alice", "teacher"}
    c.Authenticator.admin_names = {"teacher"}
    c.Authenticator.admin_password_hashes = {"teacher": auth.hash_secret(ADMIN_PASSWORD,
                                                                          iterations=1000)}
    c.NativeAuthenticator.minimum_password_length = 8
    hub = auth.HubkilnNativeAuthenticator(config=c, db=db)
    # On the roster, but not approved: the stock authenticator would pre-authorize it.
    info = hub.create_user("alice", "alices-password")
    assert info is not None and not info.is_authorized
    assert login(hub, "alice", "alices-password")[0] is None
    assert hub.create_user("teacher", "strangers-password") is None
    assert login(hub, "teacher", "strangers-password")[0] is None
    assert login(hub, "teacher", ADMIN_PASSWORD)[0] == "teacher"
    info.is_authorized = True
    db.commit()
    assert login(hub, "alice", "alices-password")[0] == "alice"


def test_approvals_count_only_from_the_hubs_own_authorization_page():
    ok = auth.from_authorization_page
    assert ok("https://hub.example.edu/hub/authorize", "hub.example.edu", "/hub/")
    assert ok("https://127.0.0.1:8443/hub/authorize", "127.0.0.1:8443", "/hub/")
    # A student's page on the same site, a page that hides its referer, another site,
    # another port, the page with a look-alike path, plain http.
    assert not ok("https://hub.example.edu/user/mallory/files/x.html", "hub.example.edu",
                  "/hub/")
    assert not ok("", "hub.example.edu", "/hub/")
    assert not ok("https://evil.example/hub/authorize", "hub.example.edu", "/hub/")
    assert not ok("https://hub.example.edu:444/hub/authorize", "hub.example.edu", "/hub/")
    assert not ok("https://hub.example.edu/hub/authorize/x", "hub.example.edu", "/hub/")
    assert not ok("http://hub.example.edu/hub/authorize", "hub.example.edu", "/hub/")


def test_the_native_approve_and_discard_links_are_guarded():
    from jupyterhub import orm
    from nativeauthenticator import NativeAuthenticator
    from nativeauthenticator.handlers import (
        DiscardHandler,
        LoginHandler,
        ToggleAuthorizationHandler,
    )

    hub = auth.HubkilnNativeAuthenticator(config=Config(),
                                          db=orm.new_session_factory("sqlite://")())
    handlers = dict(hub.get_handlers(None))
    for route, stock in ((r"/authorize/([^/]*)", ToggleAuthorizationHandler),
                         (r"/discard/([^/]*)", DiscardHandler), (r"/login", LoginHandler)):
        assert issubclass(handlers[route], stock) and handlers[route] is not stock, route
    # The stock login page times logins with a statsd client JupyterHub 6 dropped.
    handlers[r"/login"].statsd.timer("login.authenticate").start().stop(send=False)
    stock_routes = {route for route, _ in NativeAuthenticator.get_handlers(hub, None)}
    assert set(handlers) == stock_routes, "a route of the stock authenticator went missing"


def test_the_test_pins_are_the_images_pins():
    pins = dict(re.findall(r"^([a-z0-9-]+)==([^\s]+)$",
                           (PROJECT / "provision" / "files" / "hub-requirements.in").read_text(),
                           re.M))
    wanted = re.findall(r'"((?:jupyterhub)[a-z-]*)==([^"]+)"',
                        (PROJECT / "pyproject.toml").read_text())
    assert wanted, "pyproject.toml pins no jupyterhub package"
    for name, version in wanted:
        assert pins.get(name) == version, f"{name}: {version} here, {pins.get(name)} in the image"


@pytest.fixture(autouse=True)
def _quiet_hub_logs(caplog):
    caplog.set_level("ERROR")
