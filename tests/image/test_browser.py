"""A real browser: headless Chromium (from the OS archive) logs in through the login page,
waits for JupyterLab to render, and the admin sees the students in the admin panel.

Screenshots go to HUBKILN_TEST_ARTIFACTS (the image's output folder when `invoke
test` runs this), else to pytest's temporary folder. Playwright drives the
system's Chromium: its own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HUBKILN_TEST_CHROMIUM") or shutil.which("chromium") or ""
TIMEOUT_MS = 420_000  # first spawn and a cold JupyterLab under TCG take minutes


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("needs Chromium (apt-get install chromium) or HUBKILN_TEST_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: the tests run as root on the build host.
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HUBKILN_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_in(browser, front, name: str, password: str, next_path: str = "", code: str = ""):
    """A fresh browser context on the login page, with the form filled in and sent
    (the enrolment code in the form's second field, as a student types it)."""
    context = browser.new_context(ignore_https_errors=True,  # self-signed at first boot
                                  viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(front.url("/hub/login" + (f"?next={next_path}" if next_path else "")))
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    if code:
        page.fill("input[name=otp]", code.lower().replace("-", " "))
    page.click("[type=submit]")
    return context, page


def browser_sign_up_and_approval(browser, front, name: str, password: str, admin: str,
                                 admin_password: str, shots: Path) -> None:
    """The native login, as people do it: the student fills in the sign-up page, then the
    admin opens the authorization page and presses the student's Authorize button."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(front.url("/hub/signup"))
        page.fill("input[name=username]", name)
        page.fill("input[name=signup_password]", password)
        page.fill("input[name=signup_password_confirmation]", password)
        page.click("[type=submit]")
        page.get_by_text("sent to the admin").wait_for()
    finally:
        context.close()
    context, page = log_in(browser, front, admin, admin_password, "/hub/authorize")
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


def test_student_gets_jupyterlab_in_a_browser(host, browser, front, settings, launch,
                                              student_password, credentials, shots, journal):
    """The second student logs in for the first time, and JupyterLab renders (with the
    native login: after signing up and the admin's approval, all in the browser)."""
    if settings["authenticator"] not in ("firstuse", "native"):
        pytest.skip("the browser logins are tested with the firstuse and native forms")
    name = second_student(settings)
    if settings["authenticator"] == "native":
        admin = (list(launch.get("admins") or []) or [None])[0]
        assert admin, "a native login needs an admin to approve sign-ups"
        browser_sign_up_and_approval(browser, front, name, student_password, admin,
                                     credentials.admin_password(admin), shots)
    code = credentials.enrolment_codes.get(name, "") if settings["authenticator"] == "firstuse" \
        else ""  # the native login has no enrolment codes
    context, page = log_in(browser, front, name, student_password, code=code)
    try:
        page.wait_for_url(f"**/user/{name}/**")
        # JupyterLab's shell, or the file browser of Notebook 7's tree (default_ui: notebook)
        page.wait_for_selector("#jp-main-dock-panel, .jp-LabShell, .jp-DirListing")
        page.wait_for_selector(".jp-Launcher, .jp-DirListing, #notebook_list")
        home = host.user(name).home
        if host.run(f"find {home} -mindepth 1 -maxdepth 1 ! -name '.*'").stdout:
            # The home has files (course material): wait until the file browser shows them.
            page.wait_for_selector(".jp-DirListing-item")
        page.screenshot(path=str(shots / "browser-jupyterlab.png"))
    except Exception as error:
        page.screenshot(path=str(shots / "browser-jupyterlab-FAILED.png"))
        raise AssertionError(f"JupyterLab did not render for {name} at {page.url}: {error}"
                             + journal("jupyterhub.service")) from None
    finally:
        context.close()
    assert (shots / "browser-jupyterlab.png").stat().st_size > 10_000


def test_admin_sees_the_students_in_the_admin_panel(browser, front, settings, launch,
                                                    credentials, shots):
    if settings["authenticator"] not in ("firstuse", "native"):
        pytest.skip("the browser logins are tested with the firstuse and native forms")
    admins = list(launch.get("admins") or [])
    if not admins:
        pytest.skip("no admin in the launch settings")
    # Straight to the admin page: the hub's home page would start the admin's own server.
    context, page = log_in(browser, front, admins[0], credentials.admin_password(admins[0]),
                           "/hub/admin")
    try:
        page.wait_for_url("**/hub/admin**")
        for name in settings["users"]:
            page.get_by_text(name, exact=True).first.wait_for()
        page.screenshot(path=str(shots / "browser-admin-panel.png"))
    except Exception as error:
        page.screenshot(path=str(shots / "browser-admin-panel-FAILED.png"))
        raise AssertionError(f"the admin panel did not list {settings['users']}: {error}"
                             ) from None
    finally:
        context.close()
