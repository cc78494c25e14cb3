"""Boot a built disk image natively in a container (systemd-nspawn) for the image tests.

The very artifact, not a separate tree: the qcow2 is converted to a sparse raw
copy in a scratch folder, its root partition is loop-mounted read-only at its
offset (partitions on loop devices need udev, which build hosts may lack), and an
overlay with a throwaway upper folder is booted with `systemd-nspawn -b` and a
private network. The test launch settings reach cloud-init as a NoCloud seed
folder in the overlay. Everything (container, mounts, scratch) is removed on
exit, also after Ctrl-C.

What a container cannot prove, the VM still does (hubkiln/validation/imagetest.py picks the
engine per test): the image's own kernel and boot loader, the firewall as the
host sees it, cgroup limits (this host may run cgroup v1 controllers), auditd,
AppArmor, reboots and the Lynis audit. Reach the container's network with
`Container.in_netns(command)` (nsenter into its network namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hubkiln.errors import BuildError
from hubkiln.preflight import check_host_tools
from hubkiln.proc import Child
from hubkiln.stages.disk import parse_sgdisk_print

#: Options that matter on build hosts whose PID 1 is not systemd (no machined, no
#: scope units) and whose cgroups are hybrid.
NSPAWN_OPTIONS = ("--keep-unit", "--register=no", "--private-network", "--boot",
                  "--quiet", "--console=passive")


@dataclass(frozen=True)
class ContainerSpec:
    """What to boot: the image, the NoCloud seed files, where to log and work, and
    files that replace the image's own in the throwaway overlay (a settings variant,
    hubkiln/validation/variants.py)."""

    image: Path
    seed: dict[str, str]  # file name in the NoCloud seed folder -> content
    work: Path
    console_log: Path
    machine: str = "hubkiln-test"
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> content


def root_partition_offset(sgdisk_print: str) -> int:
    """Byte offset of the image's root file system: the largest partition (pure)."""
    partitions = parse_sgdisk_print(sgdisk_print)
    if not partitions:
        raise BuildError("the image has no GPT partition table (sgdisk -p found none)")
    return max(partitions, key=lambda p: p.size_bytes).offset_bytes


def nspawn_command(tree: Path, machine: str) -> list[str]:
    """The systemd-nspawn command line that boots `tree` (pure)."""
    return ["systemd-nspawn", *NSPAWN_OPTIONS, f"--machine={machine}", "-D", str(tree)]


def netns_command(leader: int, command: list[str]) -> list[str]:
    """`command` run in the network namespace of the container's init (pure)."""
    return ["nsenter", "-t", str(leader), "-n", "--", *command]


def overlay_path(tree: Path, name: str) -> Path:
    """Where the file `name` (an absolute path in the image) goes in `tree` (pure):
    refused when it is not absolute or would leave the tree."""
    relative = Path(name.lstrip("/"))
    if not name.startswith("/") or ".." in relative.parts:
        raise BuildError(f"{name}: not an absolute path inside the image")
    return tree / relative


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                found += [int(p) for p in f.read().split()]
    return found


class Container:
    """A booted image in systemd-nspawn. Use as a context manager: always torn down."""

    def __init__(self, spec: ContainerSpec):
        self.spec = spec
        self.process: Child | None = None
        self.leader: int | None = None
        self._mounts: list[Path] = []
        self._log = None

    # ------------------------------------------------------------ set-up
    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, *argv: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"`{' '.join(argv)}` failed ({result.returncode}):\n"
                             f"{(result.stdout + result.stderr).strip()[-1500:]}")
        return result.stdout

    def start(self) -> None:
        spec = self.spec
        check_host_tools(["systemd-nspawn", "qemu-img", "sgdisk"])
        spec.work.mkdir(parents=True, exist_ok=True)
        raw = spec.work / "disk.raw"
        self._run("qemu-img", "convert", "-O", "raw", str(spec.image), str(raw))
        offset = root_partition_offset(self._run("sgdisk", "-p", str(raw)))
        lower, upper, scratch, tree = (spec.work / name for name in
                                       ("lower", "upper", "overlay-work", "tree"))
        for folder in (lower, upper, scratch, tree):
            folder.mkdir()
        self._run("mount", "-o", f"ro,loop,offset={offset}", str(raw), str(lower))
        self._mounts.append(lower)
        self._run("mount", "-t", "overlay", "overlay", "-o",
                  f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(tree))
        self._mounts.append(tree)
        seed = tree / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, content in spec.seed.items():
            path = seed / name
            path.write_text(content, encoding="utf-8")
            path.chmod(0o600)
        for name, content in spec.files.items():
            path = overlay_path(tree, name)
            if not path.parent.is_dir() or path.is_symlink() or not path.parent.resolve(
                    ).is_relative_to(tree.resolve()):
                raise BuildError(f"{name}: the image has no folder for it (or a link there)")
            path.write_text(content, encoding="utf-8")
            path.chmod(0o644)
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(spec.console_log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = Child(nspawn_command(tree, spec.machine), output=self._log,
                             name="systemd-nspawn", stop_signals=())
        self.leader = self._wait_for_leader()

    def _wait_for_leader(self, timeout: float = 60) -> int:
        """The container's init: the child of systemd-nspawn that runs systemd."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.exited():
                raise BuildError(f"systemd-nspawn ended at once:\n{self.console_tail()}")
            for child in children(self.process.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
            time.sleep(0.2)
        raise BuildError("the container's init did not start within a minute:\n"
                         + self.console_tail())

    # ------------------------------------------------------------ use
    def alive(self) -> bool:
        return self.process is not None and not self.process.exited()

    def in_netns(self, command: list[str]) -> list[str]:
        assert self.leader is not None, "the container is not running"
        return netns_command(self.leader, command)

    def run(self, command: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
        """`command` on the host, inside the container's network namespace."""
        return subprocess.run(self.in_netns(command), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ teardown
    def stop(self, grace: float = 30) -> None:
        """Power the container off (SIGRTMIN+4 to its init, as machinectl poweroff does),
        then kill what is left, unmount and remove the scratch folder."""
        if self.process:
            try:
                if not self.process.exited():
                    if self.leader:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.leader, signal.SIGRTMIN + 4)
                    if not self.process.wait(grace) and self.leader:
                        # The container's init is in its own session: kill it by pid too.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.leader, signal.SIGKILL)
            finally:
                self.process.end()  # then SIGKILL to systemd-nspawn's group
                self.process = None
        if self._log:
            self._log.close()
            self._log = None
        for mount in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        self._mounts.clear()
        shutil.rmtree(self.spec.work, ignore_errors=True)
