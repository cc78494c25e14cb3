"""pip-audit over both Python environments of the image. The distributions are listed
in the guest; pip-audit runs on the test host. A vulnerability fails unless the profile's
hardening.pip_audit_allow lists it with a reason; a distribution that could not be
audited fails too. When the vulnerability service answers for no distribution at all
(unreachable, or a proxy that does not serve its API), the test is skipped with the
reason and the summary says "not run": the environment is then NOT known to be clean.
Summary: $HUBKILN_TEST_REPORTS/pip-audit.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hubkiln.validation.audit import (
    LIST_DISTRIBUTIONS,
    PYTHON_ENVS,
    nothing_audited,
    parse_pip_audit,
    pip_audit_command,
    pip_audit_environment,
    pip_audit_problems,
    pip_audit_summary,
    requirements_text,
)

SUMMARIES: dict[str, Any] = {}


def profile_allow() -> list[dict[str, str]]:
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        return []
    from hubkiln.config.profile import load_profile

    return list(load_profile(path)["hardening"]["pip_audit_allow"])


def pip_audit_binary() -> str:
    beside = Path(sys.executable).with_name("pip-audit")
    found = str(beside) if beside.exists() else shutil.which("pip-audit")
    if not found:
        pytest.fail("pip-audit is not installed on the test host: pip install -e '.[test]'")
    return found


def write_summaries() -> None:
    folder = os.environ.get("HUBKILN_TEST_REPORTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "pip-audit.json").write_text(
            json.dumps(SUMMARIES, indent=2, sort_keys=True) + "\n")


def not_run(env: str, reason: str) -> None:
    """Record that `env` was not audited, and skip (never a pass: nothing was checked)."""
    SUMMARIES[env] = {"tool": "pip-audit", "environment": env, "status": "not run",
                      "reason": reason, "passed": None}
    write_summaries()
    pytest.skip(f"{env}: NOT audited: {reason}")


@pytest.mark.parametrize("env", sorted(PYTHON_ENVS))
@pytest.mark.needs("network")  # from the container's network namespace, no service answers
def test_environment_has_no_known_vulnerability(host, env, tmp_path):
    listed = host.run(f"{PYTHON_ENVS[env]} -c \"{LIST_DISTRIBUTIONS}\"")
    assert listed.rc == 0, listed.stderr
    requirements = tmp_path / f"{env}-requirements.txt"
    requirements.write_text(requirements_text(json.loads(listed.stdout)))
    output = tmp_path / f"{env}-audit.json"
    run = subprocess.run(pip_audit_command(pip_audit_binary(), requirements, output),
                         env=pip_audit_environment(os.environ), capture_output=True, text=True,
                         timeout=900, check=False)
    if not output.exists():
        reason = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        not_run(env, f"pip-audit could not reach its vulnerability service: {reason[:300]}")
    result = parse_pip_audit(output.read_text())
    if nothing_audited(result):
        not_run(env, f"the vulnerability service answered for none of the {len(result.skipped)} "
                     f"distributions (first: {result.skipped[0][1]})")
    allow = profile_allow()
    SUMMARIES[env] = pip_audit_summary(env, result, allow)
    write_summaries()
    problems = pip_audit_problems(env, result, allow)
    assert problems == [], "\n".join(problems)
