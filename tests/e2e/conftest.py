"""End-to-end fixtures: build the small `ci` profile once per session, from scratch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubkiln import accel
from hubkiln.build import build
from hubkiln.profile import load_profile
from hubkiln.render import output_dir

E2E_PROFILE = os.environ.get("HUBKILN_E2E_PROFILE", "ci")


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
    reboot (HUBKILN_TEST_FAULTS, opt-in for `invoke build`): they run while the Lynis
    audit runs in the background, so they cost CI little."""
    before = os.environ.get("HUBKILN_TEST_FAULTS")
    os.environ["HUBKILN_TEST_FAULTS"] = "1"
    try:
        return build(E2E_PROFILE)
    finally:
        if before is None:
            os.environ.pop("HUBKILN_TEST_FAULTS")
        else:
            os.environ["HUBKILN_TEST_FAULTS"] = before


@pytest.fixture(scope="session")
def image(built, e2e_profile) -> Path:
    return output_dir(e2e_profile) / built["files"][0]["name"]


@pytest.fixture(scope="session")
def accelerator() -> str:
    return accel.choose_accelerator().name
