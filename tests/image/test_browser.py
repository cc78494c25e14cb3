"""A real browser: headless Chromium (from the OS archive) logs in through the login page,
waits for JupyterLab to render, and the admin sees the students in the admin panel.

With the form logins it fills in the hub's form (with the native login, the sign-up
and the admin's approval first); with `generic-oauth` it presses the login page's
button, fills in the tests' provider's form (tests/image/idp.py) and comes back to the
hub's callback at the launch's domain, which Chromium resolves to the front; with
`lti13` the LMS's course page (tests/image/lms.py) opens the hub in a new window: two
cross-site form posts, which only SameSite=None cookies survive.

Screenshots go to HUBKILN_TEST_ARTIFACTS (the image's output folder when `invoke
test` runs this), else to pytest's temporary folder. Playwright drives the
system's Chromium: its own browser download is not used.
"""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("HUBKILN_TEST_CHROMIUM") or shutil.which("chromium") or ""
TIMEOUT_MS = 420_000  # first spawn and a cold JupyterLab under TCG take minutes


@dataclass(frozen=True)
class Login:
    """How the browser logs in: the hub's form, the provider (at the hub's domain), or a
    launch from the LMS's course page, in a new window."""

    base: str
    provider: Any = None
    lms: Any = None
    course: str | None = None


@pytest.fixture(scope="module")
def login(front, settings, launch, idp, lms) -> Login:
    auth = settings["authenticator"]
    if auth in ("firstuse", "native"):
        return Login(front.url(""))
    port = "" if front.https_port == 443 else f":{front.https_port}"
    if auth == "generic-oauth" and idp is not None:
        return Login(f"https://{launch['domain']}{port}", idp)
    if auth == "lti13" and lms is not None:
        return Login(f"https://{launch['domain']}{port}", lms=lms,
                     course=(settings["oauth"].get("courses") or [None])[0])
    pytest.skip(f"the browser logs in through '{auth}' only with the tests' provider "
                "(generic-oauth) or LMS (lti13), in the container engine")


def course_page(tool_login_url: str, launch: dict[str, str]) -> str:
    """The LMS's page of the course, launching the tool in a new window (docs/lti.md:
    Moodle's "New window", Canvas's "Launch in a new tab") by a form posted there."""
    fields = "".join(f'<input type="hidden" name="{html.escape(key)}" '
                     f'value="{html.escape(value)}">' for key, value in launch.items())
    return ("<!doctype html><title>CI 101</title><h1>CI 101</h1>"
            f'<form id="launch" method="post" target="_blank" '
            f'action="{html.escape(tool_login_url)}">{fields}'
            '<button type="submit">Open JupyterHub</button></form>')


@pytest.fixture(scope="module")
def browser(front, launch):
    if not CHROMIUM:
        pytest.skip("needs Chromium (apt-get install chromium) or HUBKILN_TEST_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip)")
    # --no-sandbox: the tests run as root on the build host. The launch's domain (a
    # login provider sends the browser back to it) is the front.
    resolve = [f"--host-resolver-rules=MAP {launch['domain']} {front.address}"] \
        if launch.get("domain") else []
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu", *resolve])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HUBKILN_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_in(browser, login: Login, name: str, password: str, next_path: str = "",
           code: str = ""):
    """A fresh browser context on the login page, with the form filled in and sent
    (the enrolment code in the form's second field, as a student types it), or the
    provider's form, through the login page's button, or the LMS's course page: (the
    context, the page, and the view of the hub: the page, or the window the LMS opened)."""
    context = browser.new_context(ignore_https_errors=True,  # self-signed at first boot
                                  viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    if login.lms:
        launch = login.lms.launch(name, login.course,
                                  target_link_uri=login.base + (next_path or "/hub/"))
        # The course page, in a document the LMS served (Chromium would not let a
        # document of no address, such as a route's, reach the hub on this loopback).
        page.goto(login.lms.url("/jwks"))
        page.set_content(course_page(login.lms.config.tool_login_url, launch))
        with context.expect_page() as opened:
            page.click("button[type=submit]")
        tool = opened.value
        tool.set_default_timeout(TIMEOUT_MS)
        return context, tool, tool
    page.goto(login.base + "/hub/login" + (f"?next={next_path}" if next_path else ""))
    if login.provider:
        page.click("a[href*='oauth_login']")
        page.wait_for_url(login.provider.url("/authorize") + "**")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", login.provider.config.passwords[name])
        page.click("[type=submit]")
        return context, page, page
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    if code:
        page.fill("input[name=otp]", code.lower().replace("-", " "))
    page.click("[type=submit]")
    return context, page, page


def browser_sign_up_and_approval(browser, login: Login, name: str, password: str, admin: str,
                                 admin_password: str, shots: Path) -> None:
    """The native login, as people do it: the student fills in the sign-up page, then the
    admin opens the authorization page and presses the student's Authorize button."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(login.base + "/hub/signup")
        page.fill("input[name=username]", name)
        page.fill("input[name=signup_password]", password)
        page.fill("input[name=signup_password_confirmation]", password)
        page.click("[type=submit]")
        page.get_by_text("sent to the admin").wait_for()
    finally:
        context.close()
    context, page, _ = log_in(browser, login, admin, admin_password, "/hub/authorize")
    try:
        page.wait_for_url("**/hub/authorize**")
        row = page.locator(f"tr[id='{name}']")
        row.get_by_role("button", name="Authorize", exact=True).click()
        page.wait_for_selector(f"tr.success[id='{name}']")
        page.screenshot(path=str(shots / "browser-native-approval.png"))
    finally:
        context.close()


def second_student(settings) -> str:
    users = list(settings["users"])
    if len(users) < 2:
        pytest.skip("needs two students on the roster")
    return users[1]


def test_student_gets_jupyterlab_in_a_browser(host, browser, login, settings, launch,
                                              student_password, credentials, shots, journal):
    """The second student logs in for the first time, and JupyterLab renders (with the
    native login: after signing up and the admin's approval, all in the browser)."""
    name = second_student(settings)
    if settings["authenticator"] == "native":
        admin = (list(launch.get("admins") or []) or [None])[0]
        assert admin, "a native login needs an admin to approve sign-ups"
        browser_sign_up_and_approval(browser, login, name, student_password, admin,
                                     credentials.admin_password(admin), shots)
    code = credentials.enrolment_codes.get(name, "") if settings["authenticator"] == "firstuse" \
        else ""  # the native login has no enrolment codes
    context, page, view = log_in(browser, login, name, student_password, code=code)
    try:
        view.wait_for_url(f"**/user/{name}/**")
        # JupyterLab's shell, or the file browser of Notebook 7's tree (default_ui: notebook)
        view.wait_for_selector("#jp-main-dock-panel, .jp-LabShell, .jp-DirListing")
        view.wait_for_selector(".jp-Launcher, .jp-DirListing, #notebook_list")
        home = host.user(name).home
        if host.run(f"find {home} -mindepth 1 -maxdepth 1 ! -name '.*'").stdout:
            # The home has files (course material): wait until the file browser shows them.
            view.wait_for_selector(".jp-DirListing-item")
        page.screenshot(path=str(shots / "browser-jupyterlab.png"))
    except Exception as error:
        page.screenshot(path=str(shots / "browser-jupyterlab-FAILED.png"))
        raise AssertionError(f"JupyterLab did not render for {name} at {view.url}: {error}"
                             + journal("jupyterhub.service")) from None
    finally:
        context.close()
    assert (shots / "browser-jupyterlab.png").stat().st_size > 10_000


def test_admin_sees_the_students_in_the_admin_panel(browser, login, settings, launch,
                                                    credentials, shots):
    admins = list(launch.get("admins") or [])
    if not admins:
        pytest.skip("no admin in the launch settings")
    # Straight to the admin page: the hub's home page would start the admin's own server.
    context, page, view = log_in(browser, login, admins[0], credentials.admin_password(admins[0]),
                           "/hub/admin")
    try:
        view.wait_for_url("**/hub/admin**")
        for name in settings["users"]:
            view.get_by_text(name, exact=True).first.wait_for()
        page.screenshot(path=str(shots / "browser-admin-panel.png"))
    except Exception as error:
        page.screenshot(path=str(shots / "browser-admin-panel-FAILED.png"))
        raise AssertionError(f"the admin panel did not list {settings['users']}: {error}"
                             ) from None
    finally:
        context.close()
