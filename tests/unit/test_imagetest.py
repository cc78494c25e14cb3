"""Image validation bookkeeping: junit parsing, the pytest command, marking failures."""

from __future__ import annotations

from pathlib import Path

from hubkiln import artifacts
from hubkiln.imagetest import (
    FAILED_MARKER,
    parse_junit,
    pytest_command,
    record_validation,
    validation_launch_document,
)

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.image.test_services" name="test_active[jupyterhub]"/>
<testcase classname="tests.image.test_services" name="test_active[caddy]">
  <failure message="inactive">journalctl says...</failure></testcase>
<testcase classname="tests.image.test_tls" name="test_login"><skipped message="off"/></testcase>
<testcase classname="tests.image.test_x" name="test_y"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_and_names_failures():
    summary = parse_junit(JUNIT)
    assert (summary.passed, summary.failed, summary.skipped, summary.errors) == (1, 1, 1, 1)
    assert summary.failures == ("tests.image.test_services::test_active[caddy]",
                                "tests.image.test_x::test_y")
    assert not summary.ok


def test_a_run_without_tests_is_not_a_pass():
    assert not parse_junit('<testsuite name="pytest" tests="0"></testsuite>').ok


def test_pytest_targets_the_forwarded_guest(tmp_path):
    cmd = pytest_command(tmp_path / "j.xml", 2222, Path("/k"), Path("/c"))
    assert "--hosts=ssh://teacher@127.0.0.1:2222" in cmd
    assert "--ssh-identity-file=/k" in cmd and "--ssh-config=/c" in cmd


def test_launch_document_names_one_admin_and_two_students():
    doc = validation_launch_document("ssh-ed25519 AAAA k")
    assert doc["admins"] == ["teacher"] and len(doc["users"]) == 2
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]


def test_failed_validation_is_recorded_and_marked(tmp_path):
    artifacts.write_json(tmp_path / "manifest.json", {"validation": {"status": "not-run"}})
    record = {"status": "failed", "failures": ["t::a"], "log": "logs/validate.log"}
    record_validation(tmp_path, record)
    assert artifacts.read_manifest(tmp_path)["validation"]["status"] == "failed"
    assert "t::a" in (tmp_path / FAILED_MARKER).read_text()
    record_validation(tmp_path, {**record, "status": "passed", "failures": []})
    assert not (tmp_path / FAILED_MARKER).exists()
