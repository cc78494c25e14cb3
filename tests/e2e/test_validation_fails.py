"""A deliberately broken image fails `invoke build` at validation, and says what broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln import artifacts
from hubkiln.build import build
from hubkiln.errors import BuildError
from hubkiln.imagetest import FAILED_MARKER
from hubkiln.profile import load_profile
from hubkiln.render import output_dir

pytestmark = [
    pytest.mark.vm,
    pytest.mark.e2e,
    pytest.mark.skip(reason="needs the image tests (tests/image) to pass on a good image "
                     "first; issue 4 enables it"),
]

BROKEN = Path(__file__).parent / "fixtures" / "broken-hub.yaml"


def test_broken_hub_setting_fails_the_build_at_validation():
    with pytest.raises(BuildError) as info:
        build(str(BROKEN))
    message = str(info.value)
    assert "failed validation" in message
    assert "test_student_server" in message, message
    out = output_dir(load_profile(BROKEN))
    manifest = artifacts.read_manifest(out)
    assert manifest["validation"]["status"] == "failed"
    assert manifest["validation"]["failures"]
    assert (out / FAILED_MARKER).exists()
