"""The e2e image, booted with a settings variant, passes the image tests with the
variant's settings: the native login (tests/variants/native.yaml), end to end.

`invoke validate --variant` runs the container's share of tests/image against the
variant's hub settings; the native login's own tests (tests/image/test_login_native.py)
and the browser's sign-up and approval must have run, not been skipped. A variant
run is never recorded in the image's manifest.
"""

from __future__ import annotations

import re

import pytest

from hubkiln import actions
from hubkiln.paths import PROJECT_DIR, output_dir
from hubkiln.stages import artifacts

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

NATIVE = PROJECT_DIR / "tests/variants/native.yaml"


@pytest.fixture(scope="module")
def native_run(image, e2e_ref, e2e_profile):
    """The variant's run on the current e2e image (`image`: this session's build, or
    HUBKILN_E2E_IMAGE's, whose profile's current folder is then validated)."""
    before = artifacts.read_manifest(output_dir(e2e_profile))["validation"]
    record = actions.validate(e2e_ref, image=None, accelerator=None, engine="container",
                              variant_ref=str(NATIVE))
    log = output_dir(e2e_profile) / "logs/variant-ci-native/validate-container.log"
    return record, log.read_text(encoding="utf-8"), before, e2e_profile


def outcomes(log: str, test_file: str) -> str:
    """The progress letters pytest printed for `test_file` ('.' passed, 's' skipped)."""
    found = re.search(rf"{re.escape(test_file)} ([.sFEx]+)", log)
    assert found, f"{test_file} did not run:\n{log[-2000:]}"
    return found.group(1)


def test_the_native_variant_passes_the_image_tests(native_run):
    record = native_run[0]
    assert record["status"] == "passed", record["failures"]
    assert record["engines"]["vm"]["status"] == "not-run"
    assert record["passed"] >= 100, record


def test_the_native_logins_own_tests_ran(native_run):
    log = native_run[1]
    assert outcomes(log, "tests/image/test_login_native.py") == "....", log[-3000:]
    # The browser walks the sign-up and the approval, then JupyterLab renders.
    assert outcomes(log, "tests/image/test_browser.py") == "..", log[-3000:]


def test_a_variant_run_is_not_recorded(native_run):
    _, _, before, profile = native_run
    assert artifacts.read_manifest(output_dir(profile))["validation"] == before
