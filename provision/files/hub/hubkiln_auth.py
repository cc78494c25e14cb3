"""hubkiln's logins: who may claim an account, and how often one may guess.

Installed into the hub's venv beside hubkiln_hub; jupyterhub_config.py picks
the class for the profile's `hub.authenticator`. The rules, for the password
logins (`firstuse`, `native`):

- **Admins never authenticate with a first-use password or a sign-up.** Their
  password is checked against the hash the operator gave at launch
  (`admin_password_hashes`; `invoke seed` generates a password and its hash
  for every admin without one). An admin without a hash cannot log in on the
  web, whatever they type: nobody becomes an admin by being the first to try.
- **firstuse: a roster name is claimed with its enrolment code.** The first
  login of a student (no password stored yet) must carry the one-time code
  that `invoke seed` wrote for them (the form's second field); the code is
  spent when the password is set and never works again. `enrolment_codes:
  false` at launch turns this off (a lab where everyone sits in the room).
- **native: only an admin's approval authorizes.** Neither the roster nor the
  admin list pre-authorizes a sign-up; admin names cannot sign up at all. The
  approval (and discard) links are plain GETs that act at once: they act only
  when the admin's browser comes from the hub's own authorization page
  (`from_authorization_page`), so that a student's page, which is served from
  the same site, cannot make an admin's browser approve a sign-up by loading or
  linking to the URL.
- **Guessing is slowed per name**: after `MAX_FAILURES` failed logins within
  `WINDOW` seconds a name is refused for `LOCKOUT` seconds, even with the right
  password, and the hub logs `hubkiln: login locked for NAME`. Addresses are
  banned by fail2ban from the same log (provision/files/hardening).
- Password hashes are checked off the hub's event loop (a bcrypt check costs
  about 0.25 s of CPU), so one login never stalls the others.

Hash formats: bcrypt (`$2b$…`, as `htpasswd -B` or Python's bcrypt make them)
or `pbkdf2-sha256$ITERATIONS$SALT$HEX` (what `invoke seed` writes;
`hash_secret` here makes the same). Standard library and bcrypt only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

MAX_FAILURES = 5
WINDOW = 300.0
LOCKOUT = 300.0
PBKDF2_PREFIX = "pbkdf2-sha256"
PBKDF2_ITERATIONS = 200_000
#: Where spent enrolment codes are recorded (beside the homes: survives an OS swap).
SPENT_CODES = Path("/home/.hubkiln/hub/enrolment-spent")


# ---------------------------------------------------------------- hashes (pure)


def hash_secret(secret: str, *, salt: str | None = None,
                iterations: int = PBKDF2_ITERATIONS) -> str:
    """`pbkdf2-sha256$ITERATIONS$SALT$HEX` of `secret` (the format `invoke seed` writes)."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt.encode(), iterations)
    return f"{PBKDF2_PREFIX}${iterations}${salt}${digest.hex()}"


def normalise_code(code: str) -> str:
    """An enrolment code as it is hashed: what a student types, with case, spaces and
    dashes forgiven (`k7qm 4xpa9rtw` is `K7QM-4XPA-9RTW`)."""
    raw = "".join(ch for ch in code.upper() if ch.isalnum())
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def is_supported_hash(stored: str) -> bool:
    """Whether `stored` is a hash this module can check."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        return len(stored) == 60
    parts = stored.split("$")
    return (len(parts) == 4 and parts[0] == PBKDF2_PREFIX and parts[1].isdigit()
            and int(parts[1]) >= 1000 and bool(parts[2]) and len(parts[3]) == 64)


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches `stored` (bcrypt or pbkdf2-sha256); False for any other."""
    if not is_supported_hash(stored):
        return False
    if stored.startswith("$2"):
        import bcrypt  # the hub's venv has it (firstuse and native use it)

        try:
            return bcrypt.checkpw(secret.encode(), stored.encode())
        except ValueError:
            return False
    _, iterations, salt, _ = stored.split("$")
    candidate = hash_secret(secret, salt=salt, iterations=int(iterations))
    return hmac.compare_digest(candidate, stored)


async def verify_off_loop(secret: str, stored: str) -> bool:
    """verify_secret in a worker thread: the hub's event loop keeps serving."""
    return await asyncio.to_thread(verify_secret, secret, stored)


# ---------------------------------------------------------------- guessing


class LoginGuard:
    """Counts failed logins per name; a name with too many is locked for a while.

    In memory (a hub restart forgets it): it slows guessing, fail2ban bans addresses.
    """

    def __init__(self, *, max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 lockout: float = LOCKOUT, clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, name: str) -> float:
        """Seconds `name` stays locked (0 when it may try)."""
        with self._lock:
            left = self._locked_until.get(name, 0.0) - self.clock()
            if left <= 0:
                self._locked_until.pop(name, None)
                return 0.0
            return left

    def failed(self, name: str) -> bool:
        """Record a failure; True when it locks the name now."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < self.window]
            recent.append(now)
            if len(recent) >= self.max_failures:
                self._failures.pop(name, None)
                self._locked_until[name] = now + self.lockout
                return True
            self._failures[name] = recent
            return False

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


# ---------------------------------------------------------------- enrolment codes


class SpentCodes:
    """The enrolment-code hashes already used to set a password (one per line, root 0600)."""

    def __init__(self, path: Path = SPENT_CODES):
        self.path = path

    def __contains__(self, stored: str) -> bool:
        try:
            return stored in self.path.read_text(encoding="utf-8").split()
        except FileNotFoundError:
            return False

    def spend(self, stored: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(stored + "\n")


# ---------------------------------------------------------------- the authenticators


def from_authorization_page(referer: str, host: str, base_url: str) -> bool:
    """Whether a request with the Referer `referer`, sent to `host`, comes from the hub's
    authorization page (`base_url` + "authorize") of this very site (pure). No
    referer (a page that hides it) is no."""
    parts = urlsplit(referer)
    return (parts.scheme == "https" and parts.netloc == host
            and parts.path == f"{base_url}authorize")


def _authenticator_classes():
    """Build the classes lazily: importing this module must not need JupyterHub
    (the unit tests check the rules above without it)."""
    from firstuseauthenticator import FirstUseAuthenticator
    from jupyterhub.auth import Authenticator
    from jupyterhub.handlers.base import BaseHandler
    from nativeauthenticator import NativeAuthenticator
    from nativeauthenticator.handlers import (
        DiscardHandler,
        LoginHandler,
        ToggleAuthorizationHandler,
    )
    from tornado import web
    from traitlets import Bool, Dict, Set

    class _NoTimer:
        def start(self):
            return self

        def stop(self, send=True):
            return None

    class _NoStatsd:
        def timer(self, name):
            return _NoTimer()

    class NativeLoginHandler(LoginHandler):
        """NativeAuthenticator 1.3's login page on JupyterHub 6: its POST times the login
        with `self.statsd`, which JupyterHub 6 no longer has (every login answered 500),
        and JupyterHub's way of showing an error on the login form calls the page's
        `_render` with arguments the native one does not take: errors get the hub's own
        error page instead."""

        statsd = _NoStatsd()

        def render_template(self, name, **ns):
            if name == "error.html":
                return BaseHandler.render_template(self, name, **ns)
            return super().render_template(name, **ns)

    def only_from_authorization_page(handler_class):
        class Guarded(handler_class):
            async def get(self, slug):
                if not from_authorization_page(self.request.headers.get("Referer", ""),
                                               self.request.host, self.hub.base_url):
                    self.log.warning("hubkiln: %s %s refused: not from the authorization "
                                     "page", handler_class.__name__, slug)
                    raise web.HTTPError(403, "Use the buttons of the authorization page.")
                return await super().get(slug)

        Guarded.__name__ = f"Guarded{handler_class.__name__}"
        return Guarded

    REPLACED = {ToggleAuthorizationHandler: only_from_authorization_page(
        ToggleAuthorizationHandler), DiscardHandler: only_from_authorization_page(DiscardHandler),
        LoginHandler: NativeLoginHandler}

    class AdminCredentials(Authenticator):
        """Admins log in with the launch's password hash, never otherwise (a traitlets
        class of its own, so that its settings are configurable traits)."""

        admin_names = Set(config=True, help="The hub's admins (their logins are checked here).")
        admin_password_hashes = Dict(
            config=True, help="Admin name -> password hash given at launch.")

        def _guard(self) -> LoginGuard:
            if not hasattr(self, "_hubkiln_guard"):
                self._hubkiln_guard = LoginGuard()
            return self._hubkiln_guard

        def _refuse(self, handler, name: str, why: str, message: str | None = None) -> None:
            self.log.warning("hubkiln: login refused for %s: %s", name, why)
            if self._guard().failed(name):
                self.log.warning("hubkiln: login locked for %s for %d s after %d failures",
                                 name, LOCKOUT, MAX_FAILURES)
            if message and handler is not None:
                handler.custom_login_error = message

        async def _admin_login(self, handler, name: str, password: str) -> str | None:
            stored = self.admin_password_hashes.get(name)
            if not stored:
                self._refuse(handler, name, "this admin has no password from the launch "
                             "settings (admin_password_hashes); `invoke seed` makes one")
                return None
            if not await verify_off_loop(password, stored):
                self._refuse(handler, name, "wrong admin password")
                return None
            return name

        def _locked(self, handler, name: str) -> bool:
            left = self._guard().locked(name)
            if left:
                self.log.warning("hubkiln: login locked for %s (%d s left)", name, left)
                if handler is not None:
                    handler.custom_login_error = (
                        f"Too many failed logins for this name: try again in "
                        f"{int(left // 60) + 1} minutes.")
            return bool(left)

    class HubkilnFirstUseAuthenticator(AdminCredentials, FirstUseAuthenticator):
        """FirstUseAuthenticator: admins by launch hash, students claim with a code."""

        enrolment_codes = Bool(True, config=True,
                               help="Whether a student's first login needs the enrolment code.")
        enrolment_code_hashes = Dict(config=True, help="Student name -> enrolment code hash.")

        async def authenticate(self, handler, data):
            name = self.normalize_username(data.get("username", ""))
            password = data.get("password", "")
            if not self.validate_username(name) or self._locked(handler, name):
                return None
            if name in self.admin_names:
                result = await self._admin_login(handler, name, password)
            else:
                result = await self._student_login(handler, name, password,
                                                   data.get("otp", "").strip())
            if result:
                self._guard().succeeded(name)
            return result

        async def _student_login(self, handler, name: str, password: str,
                                 code: str) -> str | None:
            import dbm

            with dbm.open(self.dbm_path, "c", 0o600) as db:
                stored = db.get(name.encode("utf8"))
            if stored is not None:
                if await verify_off_loop(password, stored.decode()):
                    return name
                self._refuse(handler, name, "wrong password")
                return None
            if not self.check_allowed(name, None):
                self._refuse(handler, name, "not on the roster")
                return None
            if not self._validate_password(password):
                self._refuse(handler, name, "first-use password too short",
                             f"Choose a password of at least {self.min_password_length} "
                             "characters.")
                return None
            code_hash = None
            if self.enrolment_codes:
                code_hash = self.enrolment_code_hashes.get(name)
                if not code_hash:
                    self._refuse(handler, name, "no enrolment code was issued for this name "
                                 "(launch setting enrolment_code_hashes)")
                    return None
                if code_hash in SpentCodes() or not code or not await verify_off_loop(
                        normalise_code(code), code_hash):
                    self._refuse(handler, name, "missing, wrong or spent enrolment code",
                                 "Your first login needs the enrolment code your teacher "
                                 "gave you.")
                    return None
            import bcrypt

            hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt())
            with dbm.open(self.dbm_path, "c", 0o600) as db:
                if db.get(name.encode("utf8")) is not None:  # a concurrent first login won
                    self._refuse(handler, name, "password set by a concurrent login")
                    return None
                db[name] = hashed
            if code_hash:
                SpentCodes().spend(code_hash)
            self.log.info("hubkiln: %s set their password%s", name,
                          " with their enrolment code" if code_hash else "")
            return name

    class HubkilnNativeAuthenticator(AdminCredentials, NativeAuthenticator):
        """NativeAuthenticator: admins by launch hash; every sign-up awaits approval."""

        def get_handlers(self, app):
            return [(route, REPLACED.get(handler, handler))
                    for route, handler in super().get_handlers(app)]

        def get_authed_users(self):
            # Only what an admin approved (the stock one adds the roster and the admins).
            return {info.username for info in self._all_infos() if info.is_authorized}

        def _all_infos(self):
            from nativeauthenticator.orm import UserInfo

            return UserInfo.all_users(self.db)

        def create_user(self, username, password, **kwargs):
            if self.normalize_username(username) in self.admin_names:
                self.log.warning("hubkiln: sign-up refused for admin name %s", username)
                return None
            return super().create_user(username, password, **kwargs)

        async def authenticate(self, handler, data):
            name = self.normalize_username(data.get("username", ""))
            if self._locked(handler, name):
                return None
            if name in self.admin_names:
                result = await self._admin_login(handler, name, data.get("password", ""))
            else:
                result = await super().authenticate(handler, data)
                if not result:
                    self._refuse(handler, name, "wrong password or not approved")
            if result:
                self._guard().succeeded(name)
            return result

    return HubkilnFirstUseAuthenticator, HubkilnNativeAuthenticator


def __getattr__(name: str):
    if name in ("HubkilnFirstUseAuthenticator", "HubkilnNativeAuthenticator"):
        first, native = _authenticator_classes()
        globals().update(HubkilnFirstUseAuthenticator=first, HubkilnNativeAuthenticator=native)
        return globals()[name]
    raise AttributeError(name)
