"""Lynis reports and pip-audit results judged against a profile's hardening settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubkiln.validation.audit import (
    HOST_CA_BUNDLE,
    LYNIS_REPORT,
    LYNIS_UNIT,
    lynis_background_command,
    lynis_problems,
    lynis_summary,
    nothing_audited,
    parse_lynis_report,
    parse_pip_audit,
    pip_audit_command,
    pip_audit_environment,
    pip_audit_problems,
    pip_audit_summary,
    requirements_text,
)

REPORT = """\
# Lynis Report
report_version_major=1
lynis_version=3.0.9
hardening_index=83
lynis_tests_done=261
tests_skipped=|SSH-7408:port|
suggestion[]=DEB-0810|Install apt-listbugs|-|-|
suggestion[]=FINT-4350|Install a file integrity tool|-|-|
"""


def test_lynis_report_gives_index_suggestions_and_version():
    report = parse_lynis_report(REPORT)
    assert report.hardening_index == 83
    assert report.lynis_version == "3.0.9"
    assert report.tests_executed == 261
    assert [s.test_id for s in report.suggestions] == ["DEB-0810", "FINT-4350"]
    assert report.suggestions[0].details == ""  # "-" means none
    assert report.warnings == ()
    assert report.tests_skipped == ("SSH-7408:port",)


def test_lynis_passes_at_the_threshold_without_warnings():
    assert lynis_problems(parse_lynis_report(REPORT), 83) == []


def test_lynis_fails_below_the_threshold():
    (problem,) = lynis_problems(parse_lynis_report(REPORT), 84)
    assert "83" in problem and "lynis_min_score 84" in problem


def test_lynis_fails_on_any_warning_naming_the_test():
    report = parse_lynis_report(REPORT + "warning[]=NETW-2705|Couldn't find 2 responsive "
                                "nameservers|-|text:add one|\n")
    (problem,) = lynis_problems(report, 80)
    assert "NETW-2705" in problem and "nameservers" in problem


def test_lynis_fails_when_the_audit_did_not_finish():
    (problem,) = lynis_problems(parse_lynis_report("lynis_version=3.0.9\n"), 80)
    assert "no hardening_index" in problem


def test_lynis_summary_is_json_with_everything_the_manifest_records():
    summary = lynis_summary(parse_lynis_report(REPORT), 80)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["hardening_index"] == 83 and summary["passed"] is True
    assert summary["suggestions"][1] == {"test": "FINT-4350",
                                         "message": "Install a file integrity tool",
                                         "details": "", "solution": ""}


AUDIT = {
    "dependencies": [
        {"name": "jinja2", "version": "3.1.3", "vulns": [
            {"id": "GHSA-h75v-3vvj-5mfj", "fix_versions": ["3.1.4"], "aliases": ["CVE-2024-34064"],
             "description": "xmlattr"}]},
        {"name": "tornado", "version": "6.4.1", "vulns": [
            {"id": "PYSEC-2024-1", "fix_versions": [], "aliases": []}]},
        {"name": "six", "version": "1.16.0", "vulns": []},
    ],
    "fixes": [],
}


def test_pip_audit_json_gives_each_vulnerability_with_aliases():
    result = parse_pip_audit(json.dumps(AUDIT))
    assert result.audited == 3 and result.skipped == ()
    assert [(v.package, v.id) for v in result.vulnerabilities] == [
        ("jinja2", "GHSA-h75v-3vvj-5mfj"), ("tornado", "PYSEC-2024-1")]
    assert result.vulnerabilities[0].ids == {"GHSA-h75v-3vvj-5mfj", "CVE-2024-34064"}


def test_pip_audit_older_json_is_a_bare_list():
    result = parse_pip_audit(json.dumps(AUDIT["dependencies"]))
    assert len(result.vulnerabilities) == 2


def test_a_vulnerability_fails_unless_allowlisted_by_id_or_alias():
    result = parse_pip_audit(json.dumps(AUDIT))
    problems = pip_audit_problems("user", result, [])
    assert len(problems) == 2 and "jinja2 3.1.3 has GHSA-h75v-3vvj-5mfj" in problems[0]
    assert "fixed in 3.1.4" in problems[0] and "no fix released" in problems[1]
    allow = [{"id": "CVE-2024-34064", "reason": "templates are trusted"},
             {"id": "PYSEC-2024-1", "reason": "not reachable"}]
    assert pip_audit_problems("user", result, allow) == []


def test_unaudited_distributions_fail_with_a_clear_message():
    data = {"dependencies": [{"name": "jinja2", "skip_reason": "Dependency not found on PyPI"},
                             {"name": "six", "version": "1.16.0", "vulns": []}]}
    (problem,) = pip_audit_problems("hub", parse_pip_audit(json.dumps(data)), [])
    assert "could not audit 1 of 2" in problem and "reachable" in problem


def test_nothing_audited_only_when_the_service_answered_for_none():
    unreachable = {"dependencies": [
        {"name": n, "skip_reason": "Dependency not found on PyPI"} for n in ("six", "jinja2")]}
    assert nothing_audited(parse_pip_audit(json.dumps(unreachable)))
    partial = {"dependencies": [{"name": "jinja2", "skip_reason": "Dependency not found on PyPI"},
                                {"name": "six", "version": "1.16.0", "vulns": []}]}
    assert not nothing_audited(parse_pip_audit(json.dumps(partial)))
    assert not nothing_audited(parse_pip_audit(json.dumps({"dependencies": []})))


def test_pip_audit_summary_separates_allowed_from_open_findings():
    allow = [{"id": "PYSEC-2024-1", "reason": "not reachable"}]
    summary = pip_audit_summary("hub", parse_pip_audit(json.dumps(AUDIT)), allow)
    assert [v["id"] for v in summary["vulnerabilities"]] == ["GHSA-h75v-3vvj-5mfj"]
    assert summary["allowed"][0]["reason"] == "not reachable"
    assert summary["passed"] is False


def test_requirements_are_pinned_normalised_and_skip_local_versions():
    text = requirements_text({"Jupyter_Server": "2.14.2", "mylib": "1.0+local", "six": "1.16.0"})
    assert text == "jupyter-server==2.14.2\nsix==1.16.0\n"


def test_pip_audit_command_needs_no_resolver_nor_pip_and_trusts_the_host_bundle():
    argv = pip_audit_command("pip-audit", Path("r.txt"), Path("o.json"))
    assert {"--no-deps", "--disable-pip"} <= set(argv)
    assert argv[argv.index("--requirement") + 1] == "r.txt"
    assert argv[argv.index("--format") + 1] == "json"
    assert pip_audit_environment({"PATH": "/bin"}) == {"PATH": "/bin",
                                                       "REQUESTS_CA_BUNDLE": HOST_CA_BUNDLE}


def test_lynis_starts_in_the_background_as_a_unit_that_stays_to_be_waited_for():
    command = lynis_background_command()
    assert command.startswith("sudo -n sh -c '") and command.endswith("'")
    assert f"--unit={LYNIS_UNIT}" in command and "--remain-after-exit" in command
    assert f"--report-file {LYNIS_REPORT}" in command
    assert "command -v lynis >/dev/null || exit 0" in command  # no Lynis: nothing starts


@pytest.mark.parametrize(("value", "skipped"), [(None, False), ("1", False), ("0", True),
                                                (" 0 ", True), ("", False), ("no", False)])
def test_only_hubkiln_test_lynis_0_leaves_the_audit_out(value, skipped):
    from hubkiln.validation.audit import lynis_skipped

    env = {} if value is None else {"HUBKILN_TEST_LYNIS": value}
    assert lynis_skipped(env) is skipped
