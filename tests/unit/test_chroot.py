"""Chroot runner: the environment and argv of a script (pure), mount bookkeeping, and
where scripts land. Nothing here mounts or needs root."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln.errors import BuildError
from hubkiln.stages import chroot
from hubkiln.stages.chroot import (
    BASE_ENV,
    BUILD_DIR,
    CA_IN_ROOT,
    TRUST_VARS,
    ChrootSession,
    chroot_command,
    mount_plan,
    mounts_under,
    script_environment,
    script_placement,
)


def test_environment_is_only_base_plus_declared():
    env = script_environment({"HUBKILN_APT_PACKAGES": "git vim"})
    assert env == {**BASE_ENV, "HUBKILN_APT_PACKAGES": "git vim"}
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"] == "/root"


def test_ca_bundle_sets_every_trust_variable():
    env = script_environment({}, ca_path=CA_IN_ROOT)
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[name] == CA_IN_ROOT
    assert set(TRUST_VARS) <= set(env)
    assert CA_IN_ROOT.startswith("/run/")


def test_proxies_set_both_spellings():
    env = script_environment({}, http_proxy="http://127.0.0.1:3142", https_proxy="http://p:1")
    assert env["http_proxy"] == env["HTTP_PROXY"] == "http://127.0.0.1:3142"
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://p:1"
    assert "https_proxy" not in script_environment({}, http_proxy="http://127.0.0.1:3142")


@pytest.mark.parametrize("name", ["PATH", "SSL_CERT_FILE", "http_proxy"])
def test_declared_env_cannot_override_what_hubkiln_sets(name):
    with pytest.raises(BuildError, match=name):
        script_environment({name: "x"})


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", ""])
def test_invalid_names_are_refused(name):
    with pytest.raises(BuildError, match="invalid"):
        script_environment({name: "x"})


def test_chroot_command_clears_the_environment():
    cmd = chroot_command(Path("/r"), f"{BUILD_DIR}/x.sh", {"PATH": "/usr/bin", "A": "b c"})
    assert cmd == ["chroot", "/r", "/usr/bin/env", "-i", "PATH=/usr/bin", "A=b c",
                   "bash", f"{BUILD_DIR}/x.sh"]


def test_script_inside_support_dir_runs_from_its_copy(tmp_path):
    support = tmp_path / "provision"
    (support / "lib").mkdir(parents=True)
    script = support / "10-apt.sh"
    assert script_placement(script, support) == (
        "/run/hubkiln-build/provision/10-apt.sh", "/run/hubkiln-build/provision"
    )


def test_script_outside_support_dir_goes_beside_it(tmp_path):
    assert script_placement(tmp_path / "a.sh", tmp_path / "sub" / "lib") == (
        "/run/hubkiln-build/a.sh", "/run/hubkiln-build/lib"
    )
    assert script_placement(tmp_path / "a.sh", None) == ("/run/hubkiln-build/a.sh", None)


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:5 / /b/root/proc rw - proc proc rw
91 22 0:6 / /b/root/dev rw - devtmpfs udev rw
92 91 0:7 / /b/root/dev/pts rw - devpts devpts rw
93 22 0:8 / /b/root2/run rw - tmpfs run rw
94 22 0:9 / /b/root/with\\040space rw - tmpfs x rw
"""


def test_mounts_under_finds_only_that_tree_in_mount_order():
    assert mounts_under(Path("/b/root"), MOUNTINFO) == [
        "/b/root/proc", "/b/root/dev", "/b/root/dev/pts", "/b/root/with space"
    ]
    assert mounts_under(Path("/b/none"), MOUNTINFO) == []


def test_mount_plan_mounts_pseudo_filesystems_and_private_binds():
    plan = mount_plan(Path("/r"))
    points = [p for _, p in plan]
    assert points == ["/r/proc", "/r/sys", "/r/dev", "/r/dev/pts", "/r/dev/shm", "/r/run"]
    for argv, _ in plan:
        if "--bind" in argv:
            assert "--make-private" in argv


def test_unmount_all_goes_in_reverse_and_falls_back_to_lazy(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd == ["umount", "/r/dev"]:
            raise BuildError("busy")
        return ""

    monkeypatch.setattr(chroot, "run", fake_run)
    chroot._unmount_all(["/r/proc", "/r/dev", "/r/dev/pts"], tmp_path / "log")
    assert calls == [["umount", "/r/dev/pts"], ["umount", "/r/dev"],
                     ["umount", "--lazy", "/r/dev"], ["umount", "/r/proc"]]


def test_check_no_mounts_under_names_the_leftovers(tmp_path, monkeypatch):
    monkeypatch.setattr(chroot, "_read_mountinfo", lambda: MOUNTINFO)
    with pytest.raises(BuildError, match="/b/root/proc"):
        chroot.check_no_mounts_under(Path("/b/root"))
    chroot.check_no_mounts_under(tmp_path)


def test_run_script_copies_support_dir_and_runs_in_the_tree(tmp_path, monkeypatch):
    support = tmp_path / "provision"
    (support / "lib").mkdir(parents=True)
    (support / "lib/common.sh").write_text("x=1\n")
    (support / "10-a.sh").write_text("echo hi\n")
    root = tmp_path / "root"
    (root / BUILD_DIR.lstrip("/")).mkdir(parents=True)
    calls = []
    monkeypatch.setattr(chroot, "run", lambda cmd, **kw: calls.append(cmd) or "")
    session = ChrootSession(root=root, ca_path=CA_IN_ROOT, http_proxy="http://127.0.0.1:3142")
    chroot.run_script(session, support / "10-a.sh", {"X": "1"}, tmp_path / "log",
                      support_dir=support)
    assert (root / "run/hubkiln-build/provision/lib/common.sh").read_text() == "x=1\n"
    [cmd] = calls
    assert cmd[:4] == ["chroot", str(root), "/usr/bin/env", "-i"]
    assert cmd[-2:] == ["bash", "/run/hubkiln-build/provision/10-a.sh"]
    assert "X=1" in cmd and f"SSL_CERT_FILE={CA_IN_ROOT}" in cmd
    assert "http_proxy=http://127.0.0.1:3142" in cmd
