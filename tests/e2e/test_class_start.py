"""A small class starts on the e2e image: `invoke build --loadtest` measured it.

The session's build (tests/e2e/conftest.py) ran a class of `class_size` students on the
validated image, in the container engine under TCG (the VM under KVM): each
logged in through the form with its enrolment code, spawned, opened JupyterLab,
started a kernel, ran the course's import cell and stayed active. Every one must
have completed, and the sizing line must be in the current manifest, its
README and capacity.json. The class-scale figures (60 students) are in
docs/benchmarks.md: this is the check that the benchmark and the image keep
working, not the measurement.
"""

from __future__ import annotations

import json

import pytest

from hubkiln.capacity.record import RECORD
from hubkiln.paths import output_dir
from hubkiln.stages import artifacts

pytestmark = [pytest.mark.vm, pytest.mark.e2e]


@pytest.fixture(scope="module")
def capacity(built, e2e_profile, class_size) -> dict:
    folder = output_dir(e2e_profile)
    return {"class": class_size, "manifest": artifacts.read_manifest(folder)["capacity"],
            "record": json.loads((folder / RECORD).read_text()),
            "readme": (folder / artifacts.README).read_text()}


def test_every_student_of_the_class_completed(capacity):
    record = capacity["record"]
    assert record["failures"] == {}, record["failed_students"]
    assert record["completed"] == capacity["class"]["students"] == record["class"]["students"]


def test_each_step_was_measured_for_every_student(capacity):
    steps = capacity["record"]["steps"]
    for step in ("login", "spawn", "lab", "kernel", "first_cell", "stop"):
        assert steps[step]["count"] == capacity["class"]["students"], (step, steps[step])
        assert 0 < steps[step]["p50"] <= steps[step]["p95"] <= steps[step]["max"]
    # a cell every 20 s while active
    assert steps["cell"]["count"] >= capacity["class"]["students"]


def test_memory_per_student_was_measured(capacity):
    memory = capacity["record"]["memory"]["per_student"]
    assert memory["active"]["students"] == capacity["class"]["students"]
    assert memory["active"]["median_mib"] > memory["idle"]["median_mib"] > 20


def test_the_sizing_line_is_published_with_the_image(capacity):
    sizing = capacity["record"]["sizing"]
    assert capacity["manifest"]["sizing"] == sizing
    assert f"{capacity['class']['students']} students at class start" in sizing
    assert "0 failures" in sizing
    assert sizing in capacity["readme"]
