"""The e2e image, booted with each settings variant of tests/variants/, passes the image
tests with the variant's settings, and the variant's own tests ran, not skipped.

`invoke validate --variant` runs the container's share of tests/image against the
variant's hub settings (and launch settings made for them: a certificate, a login
provider; hubkiln/validation/material.py). A variant run is never recorded in the
image's manifest. Each variant costs one container boot (about 20 s) plus its tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hubkiln import actions
from hubkiln.paths import PROJECT_DIR, output_dir
from hubkiln.stages import artifacts

pytestmark = [pytest.mark.vm, pytest.mark.e2e]


@dataclass(frozen=True)
class Case:
    """A variant, the tests it runs (a pytest -k expression; None: the whole container
    share), and the progress letters pytest must print for its own test files."""

    file: str
    select: str | None
    outcomes: dict[str, str | None]  # None: every test passed
    least_passed: int
    check: Callable[[dict[str, Any]], None] | None = None  # of the run's reports


def culled_in_time(reports: dict[str, Any]) -> None:
    """The idle server stopped after the timeout (less the activity poll), within the
    bound; the busy one ran on (tests/image/test_idle_culling.py's measurement)."""
    seen = reports["idle-culling"]
    assert seen["timeout_seconds"] - 15 <= seen["idle_stopped_after"] <= seen["bound"], seen
    assert seen["active_running"], seen


CASES = {
    # Students sign up, an admin approves; the whole share signs its students up.
    "native": Case("native.yaml", None, {"test_login_native.py": "....",
                                         "test_browser.py": ".."}, 100),
    # The Notebook UI in a browser; linked (read-only) course material.
    "notebook-link": Case("notebook-link.yaml", None, {"test_browser.py": "..",
                                                       "test_student_account.py": None}, 100),
    # Everyone logs in through an OpenID Connect provider the tests run.
    "generic-oauth": Case("generic-oauth.yaml", None, {"test_login_oauth.py": ".....",
                                                       "test_browser.py": ".."}, 100),
    # Launched from an LMS's course over LTI 1.3 (a new window in the browser).
    "lti13": Case("lti13.yaml", None, {"test_login_lti.py": "........",
                                       "test_browser.py": ".."}, 100),
    # A one-minute timeout: only the culling test (the others would lose their servers).
    "culling": Case("culling.yaml", "idle_culling", {"test_idle_culling.py": ".."}, 2,
                    culled_in_time),
    # The launch's certificate, served.
    "tls-provided": Case("tls-provided.yaml", "tls_provided or https_front",
                         {"test_tls_provided.py": "....."}, 5),
}


def outcomes(log: str, test_file: str) -> str:
    """The progress letters pytest printed for `test_file` ('.' passed, 's' skipped)."""
    found = re.search(rf"{re.escape(test_file)} ([.sFEx]+)", log)
    assert found, f"{test_file} did not run:\n{log[-2000:]}"
    return found.group(1)


@pytest.fixture(scope="module", params=list(CASES))
def run(request, image, e2e_ref, e2e_profile):
    """One variant's run on the current e2e image (`image`: this session's build, or
    HUBKILN_E2E_IMAGE's, whose profile's current folder is then validated)."""
    case = CASES[request.param]
    path = PROJECT_DIR / "tests/variants" / case.file
    before = artifacts.read_manifest(output_dir(e2e_profile))["validation"]
    record = actions.validate(e2e_ref, image=None, accelerator=None, engine="container",
                              variant_ref=str(path), select=case.select)
    name = f"ci-{request.param}"
    log = output_dir(e2e_profile) / f"logs/variant-{name}/validate-container.log"
    after = artifacts.read_manifest(output_dir(e2e_profile))["validation"]
    return case, record, log.read_text(encoding="utf-8"), before, after


def test_the_variant_passes_the_image_tests(run):
    case, record, log, _, _ = run
    assert record["status"] == "passed", record["failures"]
    assert record["engines"]["vm"]["status"] == "not-run"
    assert record["passed"] >= case.least_passed, record


def test_the_variants_own_tests_ran(run):
    case, record, log, _, _ = run
    if case.check:
        case.check(record["reports"])
    for test_file, letters in case.outcomes.items():
        found = outcomes(log, f"tests/image/{test_file}")
        if letters is None:
            assert set(found) == {"."}, (test_file, found)  # every test passed, none skipped
        else:
            assert found == letters, (test_file, log[-3000:])


def test_a_variant_run_is_not_recorded(run):
    _, _, _, before, after = run
    assert after == before
