"""pip-audit over both Python environments of the image. The distributions are listed
in the guest; pip-audit runs on the test host. A vulnerability fails unless the profile's
hardening.pip_audit_allow lists it with a reason; a distribution that could not be
audited fails too. Summary: $HUBKILN_TEST_REPORTS/pip-audit.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hubkiln.audit import (
    LIST_DISTRIBUTIONS,
    PYTHON_ENVS,
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
    from hubkiln.profile import load_profile

    return list(load_profile(path)["hardening"]["pip_audit_allow"])


def pip_audit_binary() -> str:
    beside = Path(sys.executable).with_name("pip-audit")
    found = str(beside) if beside.exists() else shutil.which("pip-audit")
    if not found:
        pytest.fail("pip-audit is not installed on the test host: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize("env", sorted(PYTHON_ENVS))
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
        pytest.fail(f"pip-audit could not run (exit {run.returncode}); is the vulnerability "
                    f"service reachable from this host?\n{run.stderr[-3000:]}")
    result = parse_pip_audit(output.read_text())
    allow = profile_allow()
    SUMMARIES[env] = pip_audit_summary(env, result, allow)
    folder = os.environ.get("HUBKILN_TEST_REPORTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "pip-audit.json").write_text(
            json.dumps(SUMMARIES, indent=2, sort_keys=True) + "\n")
    problems = pip_audit_problems(env, result, allow)
    assert problems == [], "\n".join(problems)
