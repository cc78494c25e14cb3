"""End-to-end fixtures: build the small `ci` profile once per session, from scratch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubkiln.config.profile import load_profile
from hubkiln.machine import accel
from hubkiln.paths import output_dir
from hubkiln.stages.pipeline import build

E2E_PROFILE = os.environ.get("HUBKILN_E2E_PROFILE", "ci")
#: A built image of the e2e profile to use instead of this session's build (to run a
#: slow test again on an image that passed its validation already). CI never sets it.
E2E_IMAGE = os.environ.get("HUBKILN_E2E_IMAGE")
#: The class of `invoke build --loadtest` in the e2e build (tests/e2e/test_class_start.py):
#: small and short, for CI's time; docs/benchmarks.md has the class-scale runs.
CLASS = {"students": 10, "ramp": 10, "active": 20}


@pytest.fixture(scope="session")
def e2e_ref() -> str:
    """The --profile value of the e2e build (a name in profiles/ or a path)."""
    return E2E_PROFILE


@pytest.fixture(scope="session")
def e2e_profile():
    return load_profile(E2E_PROFILE)


@pytest.fixture(scope="session")
def built(e2e_profile):
    """The manifest of a fresh build of the e2e profile (caches may be warm), validated:
    `invoke build` boots the image and runs tests/image as its last stage, and raises
    when the image fails them. Here the validation includes the fault tests and the
    reboot (HUBKILN_TEST_FAULTS, opt-in for `invoke build`), without the Lynis audit
    (HUBKILN_TEST_LYNIS=0). Then a class of CLASS starts
    on the validated image (`--loadtest`), and its sizing line goes into the manifest."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HUBKILN_TEST_FAULTS", "1")
        # Lynis takes about 22 minutes of guest CPU under emulation, the longest path of
        # CI's validation: CI leaves it out, on the record (test_build.py checks that the
        # manifest says so); every `invoke build` audits.
        env.setenv("HUBKILN_TEST_LYNIS", "0")
        return build(E2E_PROFILE, loadtest_students=CLASS["students"],
                     loadtest_ramp=CLASS["ramp"], loadtest_active=CLASS["active"])


@pytest.fixture(scope="session")
def warm_cache(request) -> None:
    """The build's caches hold the e2e profile's layers: this session built it, or
    HUBKILN_E2E_IMAGE names an image built here before (with its caches still here)."""
    if not E2E_IMAGE:
        request.getfixturevalue("built")


@pytest.fixture(scope="session")
def image(request, e2e_profile) -> Path:
    if E2E_IMAGE:
        path = Path(E2E_IMAGE)
        assert path.is_file(), f"HUBKILN_E2E_IMAGE={E2E_IMAGE}: no such image"
        return path
    built = request.getfixturevalue("built")
    return output_dir(e2e_profile) / built["files"][0]["name"]


@pytest.fixture(scope="session")
def accelerator() -> str:
    return accel.choose_accelerator().name


@pytest.fixture(scope="session")
def class_size() -> dict[str, int]:
    """The class that the e2e build's `--loadtest` ran."""
    return CLASS
