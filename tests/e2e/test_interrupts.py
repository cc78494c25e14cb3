"""Interrupted in each long stage, a build stops at once and leaves nothing behind.

Each test starts a real `invoke build` (or `invoke validate`) as a user would, in its
own session, waits until the stage is under way (its banner printed and the program
that does its work running: mmdebstrap, a provisioning script in the chroot,
mkfs.ext4, Packer's qemu, the container of the image), then sends SIGINT (Ctrl-C) or
SIGTERM (a service manager, `kill`). It then checks what a user would: the command
ends within a bound and says it was interrupted (no traceback); no process it started
is left (every descendant seen while it ran is gone); nothing new is mounted; the
cache holds no half-made layer (a layer only ever appears complete, renamed into
place) and no scratch folder of the build; and no image became current.

The stages after the first run on the e2e build's warm cache (`warm_cache`),
with their outputs in a temporary folder. The rootfs stage gets an empty cache of its
own, and the envs stage a profile whose kernel name differs from the ci profile's,
so that its OS layer is a cache hit and its environments a miss (checked below).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hubkiln import paths
from hubkiln.config.profile import load_profile
from hubkiln.stages import provision
from hubkiln.stages.cache import base_key, layer_key

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

INVOKE = str(Path(sys.executable).with_name("invoke"))
#: How long a stage may take to start, and the build to end after the signal.
START_TIMEOUT = 900
STOP_TIMEOUT = 150


def descendants(root: int) -> dict[int, str]:
    """Live processes below `root` (by parent pid, across sessions), as pid -> name."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        pid = int(entry.name)
        parents[pid], names[pid] = int(fields[1]), stat[stat.index("(") + 1: stat.rindex(")")]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = names[pid]
                frontier.append(pid)
    return found


def in_a_chroot(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/root") != "/"
    except OSError:
        return False


def alive(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.index("(") + 1: stat.rindex(")")] == name and \
        stat[stat.rindex(")") + 2:].split()[0] != "Z"


class Run:
    """A hubkiln command run as a user runs it, watched until it ends."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.lines: list[str] = []
        self.seen: dict[int, str] = {}
        self.mounts_before = mount_points()
        self.proc = subprocess.Popen([INVOKE, *args], cwd=paths.PROJECT_DIR,
                                     env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, banner: str, program: str | Callable[[int], bool]) -> None:
        """Until the stage's banner is out and `program` (a command name, or a test of a
        pid) runs below the command."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"ended before {banner!r}:\n{self.output}"
            now = descendants(self.proc.pid)
            self.seen.update(now)
            if banner in self.output and any(
                    program(pid) if callable(program) else name == program
                    for pid, name in now.items()):
                return
            time.sleep(0.2)
        raise AssertionError(f"{program} did not start in {banner!r}:\n{self.output[-3000:]}")

    def interrupt(self, sig: signal.Signals) -> float:
        """Send `sig` as a terminal (SIGINT, Ctrl-C: the foreground process group) or
        `kill PID` and service managers (SIGTERM: the main process only) would; return
        the seconds it took to exit."""
        self.seen.update(descendants(self.proc.pid))
        sent = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        deadline = sent + STOP_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.seen.update(descendants(self.proc.pid))
            time.sleep(0.1)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running {STOP_TIMEOUT} s after {sig.name}:\n"
                                 f"{self.output[-3000:]}")
        self._reader.join(10)
        return time.monotonic() - sent

    def left_behind(self) -> list[str]:
        time.sleep(1)  # a process that was told to go may take a moment to be reaped
        return [f"{name} (pid {pid})" for pid, name in self.seen.items() if alive(pid, name)]


def mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def half_made_layers(cache: Path) -> list[str]:
    """Layers being made live in `.<key>.*` folders beside their target: none may stay."""
    rootfs = cache / "rootfs"
    return sorted(p.name for p in rootfs.glob(".*")) if rootfs.exists() else []


def check_stopped(run: Run, sig: signal.Signals, *, output: Path, cache: Path,
                  profile: str | None) -> None:
    """`profile`: the build's profile, of which no image may have become current."""
    seconds = run.interrupt(sig)
    text = run.output
    assert run.proc.returncode != 0, text
    assert "interrupted" in text, text[-2000:]
    assert "Traceback" not in text, text[-4000:]
    assert run.left_behind() == [], text[-2000:]
    assert sorted(mount_points() - run.mounts_before) == []
    assert half_made_layers(cache) == []
    if profile:
        assert not (output / profile).exists(), "an interrupted build made an image current"
        assert not (cache / "work" / profile).exists(), "the build's scratch folder was kept"
    assert seconds < STOP_TIMEOUT


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "output"


def test_interrupted_while_bootstrapping_the_os(tmp_path, outputs):
    cache = tmp_path / "cache"  # empty: the rootfs stage has to run
    run = Run(["build", "--profile=ci", "--skip-validation"],
              {"HUBKILN_OUTPUT": str(outputs), "HUBKILN_CACHE": str(cache)})
    run.wait_for("==> rootfs:", "mmdebstrap")
    time.sleep(3)  # well under way: downloading and unpacking
    check_stopped(run, signal.SIGINT, output=outputs, cache=cache, profile="ci")
    assert not list((cache / "rootfs").glob("os-*")), "a half-bootstrapped OS was kept"


def test_terminated_while_provisioning_in_the_chroot(warm_cache, tmp_path, outputs):
    variant = tmp_path / "ci-interrupted.yaml"
    # A kernel name of its own: the environments layer is a miss at every run (nothing
    # is cached when the test passes), with the same packages to install as ci.
    variant.write_text(f"extends: {paths.PROFILES_DIR / 'ci.yaml'}\nname: ci-interrupted\n"
                       "description: the ci profile under another kernel name\n"
                       f"environment:\n  kernel_display_name: Python 3 ({uuid.uuid4().hex})\n")
    ci, other = load_profile("ci"), load_profile(variant)
    steps = provision.steps_in("envs")
    assert base_key(ci) == base_key(other)  # the OS layer is a hit...
    assert layer_key(base_key(ci), steps, provision.provision_env(ci)) != \
        layer_key(base_key(other), steps, provision.provision_env(other))  # ...envs a miss
    run = Run(["build", f"--profile={variant}", "--skip-validation"],
              {"HUBKILN_OUTPUT": str(outputs)})
    run.wait_for("==> envs:", in_a_chroot)
    time.sleep(3)
    check_stopped(run, signal.SIGTERM, output=outputs, cache=paths.CACHE_DIR,
                  profile="ci-interrupted")


def test_interrupted_while_writing_the_disk(warm_cache, outputs):
    run = Run(["build", "--profile=ci", "--skip-validation"], {"HUBKILN_OUTPUT": str(outputs)})
    run.wait_for("==> disk:", "mkfs.ext4")
    check_stopped(run, signal.SIGINT, output=outputs, cache=paths.CACHE_DIR, profile="ci")


def test_interrupted_while_packer_bakes(warm_cache, outputs):
    run = Run(["build", "--profile=ci", "--skip-validation"], {"HUBKILN_OUTPUT": str(outputs)})
    run.wait_for("==> bake:", "qemu-system-x86")
    time.sleep(5)  # the guest is booting
    check_stopped(run, signal.SIGINT, output=outputs, cache=paths.CACHE_DIR, profile="ci")
    assert not list((paths.CACHE_DIR / "work" / "ci").glob("packer-out/*.qcow2*"))


def test_terminated_while_validating_in_a_container(image, outputs):
    run = Run(["validate", "--profile=ci", f"--image={image}", "--engine=container"],
              {"HUBKILN_OUTPUT": str(outputs)})
    before = image.stat()
    run.wait_for("booting the image in a container", "systemd")
    time.sleep(3)
    check_stopped(run, signal.SIGTERM, output=outputs, cache=paths.CACHE_DIR, profile=None)
    assert (image.stat().st_mtime_ns, image.stat().st_size) == \
        (before.st_mtime_ns, before.st_size), "the image under test was written to"
