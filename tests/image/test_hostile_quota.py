"""Per-student disk quotas (hub.limits.disk), attacked the way a student would: by
writing past the limit in their own home.

What it attacks: one student using up the file system of the homes (the data disk,
or the OS disk) for everyone. On an image without quotas (no `usrquota` mount
option, no aquota.user, quotas not turned on at boot by hubkiln-quota.service, a
kernel without the quota_v2 module, or no setquota at spawn) the allocations run
past the limit, the loop stops at a bound, and the test fails. Quotas that are off
fail first, with hubkiln-quota's journal: a profile that sets a limit must get it
enforced, so this is never a skip. The limit comes from the profile the image was
built from (HUBKILN_TEST_PROFILE), never from the image.

Fast under emulation: fallocate (the quota counts allocated blocks) takes the
space without writing it, so a 2G limit costs no more than ci's 64M; only the
last write, the way a notebook is saved, writes 2 MiB.
"""

from __future__ import annotations

import os
import shlex

import pytest

from hubkiln.config.profile import load_profile, parse_size

pytestmark = pytest.mark.needs("filesystem")

MIB = 1 << 20
FOLDER = "quota-test"
QUOTA_UNIT = "hubkiln-quota.service"

#: As the student: take space in halving steps (64 MiB down to 1 MiB) until the
#: kernel refuses, never more than BOUND bytes (an image without quotas would
#: otherwise fill its disk); print the last refusal, then what was taken.
FILL = """
set -u
cd {home} && rm -rf {folder} && mkdir {folder} && cd {folder}
i=0 size=$((64 << 20)) total=0 last=none
while ((size >= 1 << 20 && total <= {bound})); do
    if err="$(fallocate -l "$size" "hog.$i" 2>&1)"; then
        total=$((total + size)) i=$((i + 1))
    else
        last="$err" size=$((size / 2))
        rm -f "hog.$i"
    fi
done
printf 'taken %s\\n' "$total"
printf 'refused %s\\n' "$last"
"""


@pytest.fixture(scope="module")
def disk_limit() -> int:
    """The profile's hub.limits.disk in bytes; skips when the profile turns quotas off."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        pytest.skip("needs HUBKILN_TEST_PROFILE (the profile the image was built from)")
    limit = load_profile(path)["hub"]["limits"]["disk"]
    if limit is None:
        pytest.skip("the profile turns quotas off (hub.limits.disk: null)")
    return parse_size(limit)


@pytest.fixture(scope="module")
def other(settings, student, log_in):
    users = [u for u in settings["users"] if u != student.name]
    if not users:
        pytest.skip("needs two students on the roster")
    return log_in(users[0])


def as_user(name: str, script: str) -> str:
    return f"runuser -u {name} -- bash -c {shlex.quote(script)}"


def quota_devices(host, student) -> list[str]:
    """The devices of the student's home and of / (as hubkiln-prepare-user sets them)."""
    home = host.user(student.name).home
    return sorted(set(host.run(f"df --output=source {home} / | tail -n +2").stdout.split()))


def test_quotas_are_on_for_the_homes_and_the_os_disk(host, student, disk_limit, journal):
    """A failure here, not a skip: the profile sets a limit. The usual cause, a kernel
    without the quota_v2 module, is in hubkiln-quota's journal and its login message."""
    devices = quota_devices(host, student)
    state = host.run(f"LC_ALL=C quotaon -pu {' '.join(devices)}")
    off = [line for line in state.stdout.splitlines() if not line.endswith(" is on")]
    motd = host.run("cat /run/motd.d/hubkiln-quota 2>/dev/null").stdout
    assert state.stdout.strip() and not off, (
        f"user quotas are not on for {devices}, though the profile sets hub.limits.disk "
        f"({disk_limit >> 20} MiB): {state.stdout}{state.stderr}\n{motd}" + journal(QUOTA_UNIT))


def test_the_students_limit_is_the_profiles(host, student, disk_limit):
    """Set by setquota at their server's start, on every file system they write to
    (-v: also where they use nothing yet)."""
    devices = quota_devices(host, student)
    report = host.run(f"repquota -v -u {' '.join(devices)}").stdout
    rows = [line.split() for line in report.splitlines() if line.startswith(student.name + " ")]
    assert len(rows) == len(devices), report
    assert {int(row[4]) for row in rows} == {disk_limit // 1024}, report  # hard limit, KiB


@pytest.fixture(scope="module")
def filled(host, student, disk_limit):
    """The first student after filling their quota: (bytes taken, the last refusal,
    what a plain 2 MiB write then said, bytes in the home before)."""
    # A module fixture is set up before the per-test root of conftest's _as_root.
    with host.sudo():
        home = host.user(student.name).home
        host.run(f"rm -rf {home}/{FOLDER}")
        before = int(host.run(f"du -sx --block-size=1 {home}").stdout.split()[0])
        run = host.run(as_user(student.name, FILL.format(home=home, folder=FOLDER,
                                                          bound=disk_limit + 64 * MIB)))
        save = host.run(as_user(student.name, f"head -c {2 * MIB} /dev/zero "
                                              f"> {home}/{FOLDER}/notebook.ipynb"))
    try:
        assert run.rc == 0, run.stdout + run.stderr
        found = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
        yield int(found["taken"]), found["refused"], save, before
    finally:
        with host.sudo():
            host.run(f"rm -rf {home}/{FOLDER}")


def test_a_student_is_refused_past_their_quota(filled, disk_limit):
    taken, refused, _, _ = filled
    assert taken <= disk_limit, (
        f"the student took {taken >> 20} MiB, past the profile's {disk_limit >> 20} MiB quota")
    assert "Disk quota exceeded" in refused, refused


def test_the_quota_is_the_profiles_not_a_smaller_one(filled, disk_limit):
    taken, _, _, before = filled
    # What the home held already counts; the last halving step leaves under 1 MiB.
    assert taken >= disk_limit - before - 2 * MIB, (
        f"the student got only {taken >> 20} MiB (+{before >> 20} MiB already in the home) "
        f"of the profile's {disk_limit >> 20} MiB")


def test_saving_past_the_quota_says_disk_quota_exceeded(filled):
    """The message JupyterLab shows when a save fails: the kernel's EDQUOT."""
    _, _, save, _ = filled
    assert save.rc != 0, "a 2 MiB write past the quota succeeded"
    assert "Disk quota exceeded" in save.stderr, save.stderr


def test_another_student_can_still_write_their_home(host, filled, other):
    name = other.name
    target = f"{host.user(name).home}/quota-other.bin"
    run = host.run(as_user(name, f"head -c {8 * MIB} /dev/zero > {target} && rm {target}"))
    assert run.rc == 0, f"{name} cannot write while another student is at their quota: " + (
        run.stderr)
