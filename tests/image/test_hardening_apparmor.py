"""AppArmor is enabled with profiles loaded (HARDENING.md "packages"); only profiles
of programs the image lacks are left out (provision/80-hardening.sh)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "provision/files/hardening"))
import hubkiln_hardening as rules  # noqa: E402

#: Proven in the VM only (AppArmor needs the image's own kernel): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("kernel")



def test_apparmor_is_enabled(host, hardening, journal):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    assert host.service("apparmor").is_enabled, journal("apparmor.service")


def test_apparmor_has_profiles_loaded(host, hardening, journal):
    with host.sudo():
        result = host.run("aa-status --profiled")
    assert result.rc == 0 and int(result.stdout.strip() or 0) > 0, (
        result.stdout + result.stderr + journal("apparmor.service"))


def disabled_profiles(host) -> dict[str, str]:
    """{name: text} of every profile linked into /etc/apparmor.d/disable, in one guest
    command (a command per profile costs seconds each under emulation)."""
    with host.sudo():
        names = host.run("ls /etc/apparmor.d/disable").stdout.split()
        if not names:
            return {}
        out = host.run("cd /etc/apparmor.d && tail -v -n +1 -- "
                       + " ".join(shlex.quote(n) for n in names)).stdout
    parts = re.split(r"(?m)^==> (.+) <==\n", out)
    texts = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert sorted(texts) == sorted(names), "cannot read every disabled profile"
    return texts


def test_only_profiles_of_absent_programs_are_disabled(host, hardening):
    disabled = disabled_profiles(host)
    with host.sudo():
        loaded = host.run("aa-status --json").stdout
    assert disabled, "no profile was disabled: every one is loaded at each boot"
    checks = []
    for name, text in disabled.items():
        attachments = rules.profile_attachments(text)
        assert attachments, f"{name} attaches by name only: it must stay loaded"
        # as the rule reads them: a variable of tunables/ matches one path component
        patterns = [p for a in attachments
                    for p in rules.expand_braces(re.sub(r"@\{\w+\}", "*", a))]
        globs = " ".join(shlex.quote(p).replace("*", "'*'") for p in patterns)
        checks.append(f'for p in {globs}; do if [ -e "$p" ] || [ -L "$p" ]; then '
                      f'echo {shlex.quote(name)}: "$p"; fi; done')
    # One command for every profile: each match is printed as "profile: path".
    found = host.run("shopt -s globstar nullglob; " + "; ".join(checks))
    assert found.rc == 0, found.stderr
    assert found.stdout.strip() == "", f"disabled, but their programs are here:\n{found.stdout}"
    # a profile of a program the image has stays loaded
    assert host.file("/usr/sbin/unix_chkpwd").exists
    assert '"unix-chkpwd"' in loaded
