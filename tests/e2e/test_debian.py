"""Debian 12: the ci profile on Debian (tests/profiles/debian.yaml) builds, boots and
passes the same image tests as the Ubuntu image.

`invoke build` validates as its last stage (the container's share at native speed,
then the VM's under emulation) and raises when the image fails, so a build that
returns is a validated image; the manifest must say so, for Debian. Without the
fault tests, the reboot and Lynis (the Ubuntu e2e build runs those). Cost: a build
from an empty cache and one VM boot, about 25 minutes under TCG: marked `slow`
(`invoke test --slow`), outside CI's hour.
"""

from __future__ import annotations

import pytest

from hubkiln.paths import PROJECT_DIR
from hubkiln.stages.pipeline import build

pytestmark = [pytest.mark.vm, pytest.mark.e2e, pytest.mark.slow]

PROFILE = PROJECT_DIR / "tests/profiles/debian.yaml"


@pytest.fixture(scope="module")
def debian_build():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HUBKILN_TEST_LYNIS", "0")
        return build(str(PROFILE))


def test_the_debian_image_is_built_and_validated(debian_build):
    # what the image says it is (its os-release, read by the build), not the profile
    assert debian_build["os"]["pretty_name"].startswith("Debian GNU/Linux 12"), debian_build["os"]
    validation = debian_build["validation"]
    assert validation["status"] == "passed", validation.get("failures")
    assert {name: run["status"] for name, run in validation["engines"].items()} in (
        {"vm": "passed"}, {"container": "passed", "vm": "passed"}), validation["engines"]
    assert validation["passed"] >= 200, validation
