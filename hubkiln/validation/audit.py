"""Security audits of a booted image: read Lynis' report and pip-audit's JSON, judge them.

Pure functions only: the image tests (tests/image/test_lynis.py and
test_pip_audit.py) run the tools and hand their output here. Lynis runs in
the guest (`lynis audit system`, report /var/log/lynis-report.dat); pip-audit
runs on the build host against a pinned list of the distributions installed
in each of the image's Python environments (`--no-deps --disable-pip -r`).

The verdicts follow the profile: Lynis fails below `hardening.lynis_min_score`
or on any warning; pip-audit fails on a vulnerability that
`hardening.pip_audit_allow` does not list (by id or alias), and on any
distribution it could not audit (a vulnerability service that cannot be
reached or does not know the release must not pass silently).

Limits: the Lynis report format is the key=value file of Lynis 3.x; pip-audit's
JSON is that of pip-audit 2.x (a list of dependencies, with or without the
top-level "dependencies" key). Nothing here decides whether a finding matters:
the allowlist and its written reasons do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Lynis writes its machine-readable report.
LYNIS_REPORT = "/var/log/lynis-report.dat"
#: The transient unit that runs Lynis in the background of a validation run.
LYNIS_UNIT = "hubkiln-test-lynis.service"
#: The audit, as run in the guest (root).
LYNIS_AUDIT = f"lynis audit system --no-colors --quick --quiet --report-file {LYNIS_REPORT}"
#: Everything a host needs to trust the intercepting proxy in front of the registries.
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: The image's two Python environments (provision/20-hub-env.sh, 40-user-env.sh).
PYTHON_ENVS = {"hub": "/opt/hubkiln/hub/bin/python", "user": "/opt/hubkiln/user/bin/python"}

#: Python run by an environment's interpreter in the guest: its installed
#: distributions as a JSON object {name: version}.
LIST_DISTRIBUTIONS = (
    "import json, importlib.metadata as m; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() "
    "if d.metadata['Name']}, sort_keys=True))"
)


# ------------------------------------------------------------------ Lynis

#: HUBKILN_TEST_LYNIS=0 leaves the audit out of a validation, recorded as not run with
#: this reason (CI's e2e build sets it; `invoke build` always audits).
LYNIS_SKIP_REASON = ("Lynis not run (HUBKILN_TEST_LYNIS=0): under emulation it takes about "
                     "22 minutes of the guest's CPU, more than CI's time allows; every "
                     "`invoke build` runs it")


def lynis_skipped(env: Mapping[str, str]) -> bool:
    """Whether this validation leaves the Lynis audit out (pure)."""
    return env.get("HUBKILN_TEST_LYNIS", "1").strip() == "0"


def lynis_background_command() -> str:
    """Start the audit in the guest as a transient unit, niced, without waiting (pure).

    Under emulation Lynis takes 15-25 min; started when SSH first answers, it runs
    beside the other image tests, and tests/image/test_lynis.py waits for the unit.
    RemainAfterExit keeps the unit (and so its state) after Lynis ends. Nothing is
    started when the image has no Lynis."""
    return (f"sudo -n sh -c 'command -v lynis >/dev/null || exit 0; "
            f"systemd-run --quiet --unit={LYNIS_UNIT} --remain-after-exit "
            f"--property=Nice=10 {LYNIS_AUDIT}'")


@dataclass(frozen=True)
class LynisFinding:
    """One warning or suggestion of a Lynis report."""

    test_id: str
    message: str
    details: str = ""
    solution: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"test": self.test_id, "message": self.message, "details": self.details,
                "solution": self.solution}


@dataclass(frozen=True)
class LynisReport:
    """What a Lynis run reported."""

    hardening_index: int | None
    warnings: tuple[LynisFinding, ...] = ()
    suggestions: tuple[LynisFinding, ...] = ()
    lynis_version: str = ""
    tests_executed: int = 0
    tests_skipped: tuple[str, ...] = ()


def _finding(value: str) -> LynisFinding:
    """`TEST-ID|message|details|solution|` (trailing fields optional, `-` means none)."""
    parts = [p.strip() for p in value.split("|")]
    parts += [""] * (4 - len(parts))
    details, solution = ("" if p == "-" else p for p in parts[2:4])
    return LynisFinding(parts[0], parts[1], details, solution)


def parse_lynis_report(text: str) -> LynisReport:
    """Parse the text of lynis-report.dat (key=value lines, `key[]=` for lists)."""
    values: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.endswith("[]"):
            lists.setdefault(key[:-2], []).append(value)
        else:
            values[key] = value
    index = values.get("hardening_index", "").strip()
    executed = values.get("lynis_tests_done", "").strip()
    skipped = "|".join(lists.get("skipped_test", []) + [values.get("tests_skipped", "")])
    return LynisReport(
        hardening_index=int(index) if index.isdigit() else None,
        warnings=tuple(_finding(v) for v in lists.get("warning", [])),
        suggestions=tuple(_finding(v) for v in lists.get("suggestion", [])),
        lynis_version=values.get("lynis_version", ""),
        tests_executed=int(executed) if executed.isdigit() else 0,
        tests_skipped=tuple(t for t in skipped.split("|") if t),
    )


def lynis_problems(report: LynisReport, min_score: int) -> list[str]:
    """Why the report fails the profile (empty when it passes)."""
    problems = []
    if report.hardening_index is None:
        problems.append("the Lynis report has no hardening_index: did the audit finish?")
    elif report.hardening_index < min_score:
        problems.append(f"Lynis hardening index {report.hardening_index} is below the "
                        f"profile's hardening.lynis_min_score {min_score}")
    problems += [f"Lynis warning {w.test_id}: {w.message}"
                 + (f" ({w.details})" if w.details else "") for w in report.warnings]
    return problems


def lynis_summary(report: LynisReport, min_score: int) -> dict[str, Any]:
    """The JSON summary recorded in manifest.json."""
    return {
        "tool": "lynis",
        "version": report.lynis_version,
        "hardening_index": report.hardening_index,
        "min_score": min_score,
        "tests_executed": report.tests_executed,
        "warnings": [w.as_dict() for w in report.warnings],
        "suggestions": [s.as_dict() for s in report.suggestions],
        "passed": not lynis_problems(report, min_score),
    }


# -------------------------------------------------------------- pip-audit


@dataclass(frozen=True)
class Vulnerability:
    """One known vulnerability of one installed distribution."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()
    description: str = ""

    @property
    def ids(self) -> set[str]:
        return {self.id, *self.aliases}

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "id": self.id,
                "aliases": list(self.aliases), "fix_versions": list(self.fix_versions)}


@dataclass(frozen=True)
class PipAuditResult:
    """pip-audit's findings for one environment."""

    audited: int
    vulnerabilities: tuple[Vulnerability, ...] = ()
    #: (name, reason) of distributions pip-audit could not audit.
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _normalise(name: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_text(distributions: Mapping[str, str]) -> str:
    """A pinned requirements file (`name==version` lines) of installed distributions (pure).

    Distributions pip-audit cannot look up are left out: local versions (`+local`).
    """
    lines = sorted(f"{_normalise(name)}=={version}" for name, version in distributions.items()
                   if "+" not in version)
    return "".join(f"{line}\n" for line in lines)


def pip_audit_command(pip_audit: str, requirements: Path, output: Path) -> list[str]:
    """The pip-audit argv for a pinned requirements file (pure): no resolver, no pip,
    JSON into `output`. pip-audit exits 1 when it finds a vulnerability."""
    return [pip_audit, "--no-deps", "--disable-pip", "--requirement", str(requirements),
            "--format", "json", "--output", str(output), "--progress-spinner", "off"]


def pip_audit_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment pip-audit runs with: HTTPS trusts the host bundle (pure)."""
    return {**base, "REQUESTS_CA_BUNDLE": HOST_CA_BUNDLE}


def parse_pip_audit(text: str) -> PipAuditResult:
    """Parse pip-audit's `--format json` output."""
    data = json.loads(text)
    dependencies = data.get("dependencies", []) if isinstance(data, dict) else data
    vulnerabilities = []
    skipped = []
    for dependency in dependencies:
        name = dependency.get("name", "")
        if dependency.get("skip_reason"):
            skipped.append((name, dependency["skip_reason"]))
            continue
        for vuln in dependency.get("vulns", []):
            vulnerabilities.append(Vulnerability(
                package=name, version=dependency.get("version", ""), id=vuln["id"],
                aliases=tuple(vuln.get("aliases", [])),
                fix_versions=tuple(vuln.get("fix_versions", [])),
                description=vuln.get("description", "")))
    return PipAuditResult(audited=len(dependencies) - len(skipped),
                          vulnerabilities=tuple(vulnerabilities), skipped=tuple(skipped))


def allowed_ids(allow: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The profile's hardening.pip_audit_allow as {id: reason}."""
    return {entry["id"]: entry["reason"] for entry in allow}


def unallowed(result: PipAuditResult, allow: Iterable[Mapping[str, str]]
              ) -> list[Vulnerability]:
    """The vulnerabilities that the allowlist does not cover (by id or alias)."""
    ids = set(allowed_ids(allow))
    return [v for v in result.vulnerabilities if not v.ids & ids]


def nothing_audited(result: PipAuditResult) -> bool:
    """True when pip-audit looked up no distribution at all: its vulnerability service
    was unreachable or refused every lookup (a proxy without the JSON API, no DNS).
    That says nothing about the environment; a partial audit is a failure instead."""
    return result.audited == 0 and bool(result.skipped)


def pip_audit_problems(env: str, result: PipAuditResult,
                       allow: Iterable[Mapping[str, str]]) -> list[str]:
    """Why the environment fails the profile (empty when it passes)."""
    problems = []
    if result.skipped:
        examples = "; ".join(f"{name}: {reason}" for name, reason in result.skipped[:3])
        problems.append(
            f"{env}: pip-audit could not audit {len(result.skipped)} of "
            f"{len(result.skipped) + result.audited} distributions, so the environment is "
            f"NOT known to be clean (is the vulnerability service reachable from this host?): "
            f"{examples}")
    problems += [f"{env}: {v.package} {v.version} has {v.id}"
                 + (f" (aliases {', '.join(v.aliases)})" if v.aliases else "")
                 + (f", fixed in {', '.join(v.fix_versions)}" if v.fix_versions else
                    ", no fix released")
                 + "; upgrade it, or allowlist it in hardening.pip_audit_allow with a reason"
                 for v in unallowed(result, allow)]
    return problems


def pip_audit_summary(env: str, result: PipAuditResult,
                      allow: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """The JSON summary of one environment recorded in manifest.json."""
    allow = list(allow)
    reasons = allowed_ids(allow)
    accepted = [{**v.as_dict(), "reason": next(reasons[i] for i in v.ids if i in reasons)}
                for v in result.vulnerabilities if v.ids & set(reasons)]
    return {
        "tool": "pip-audit",
        "environment": env,
        "audited": result.audited,
        "skipped": [{"name": n, "reason": r} for n, r in result.skipped],
        "vulnerabilities": [v.as_dict() for v in unallowed(result, allow)],
        "allowed": accepted,
        "passed": not pip_audit_problems(env, result, allow),
    }
