"""Boot a built image locally under qemu, reach it over SSH, and stop it cleanly.

Used by the image tests and `invoke launch`: the image is booted on a
snapshot (its file is never changed), with a NoCloud seed ISO, user
networking whose forwards bind 127.0.0.1 only, optionally restricted so the
guest has no way out, and the serial console in a log file.

An optional data disk (a qcow2 file) is attached read-write, never on a
snapshot: the image's hubkiln-data-disk puts /home on it.

Limits: x86_64 guests only; one NIC; ports are picked free at start but could
in theory be taken by another process before qemu binds them. qemu locks a
data disk file, so two guests cannot share one.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hubkiln.errors import BuildError
from hubkiln.proc import Child

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


@dataclass
class VmSpec:
    """What to boot and how."""

    image: Path
    seed_iso: Path | None
    serial_log: Path
    accelerator: str = "tcg"
    memory_mib: int = 2048
    cpus: int = 2
    forwards: dict[int, int] = field(default_factory=dict)  # guest port → host port
    restrict_network: bool = False
    firmware: str = "bios"  # or "uefi"
    uefi_vars: Path | None = None
    snapshot: bool = True
    extra_disks: list[Path] = field(default_factory=list)
    #: A qcow2 data disk for /home (hubkiln-data-disk): attached read-write, never on a
    #: snapshot, so what the guest writes there outlives the boot and the image.
    data_disk: Path | None = None


def data_disk_args(disk: Path) -> list[str]:
    """qemu options for a data disk: a virtio disk written to the file.

    A plain `if=virtio` drive given after the OS disk: SeaBIOS boots the first
    hard disk only, so the data disk must not come first on the PCI bus (a
    `-device virtio-blk-pci` is placed before the `if=virtio` drives).
    """
    return ["-drive", f"file={disk},if=virtio,format=qcow2,discard=unmap"]


def create_data_disk_command(disk: Path, size: str) -> list[str]:
    """The command that makes a blank qcow2 data disk of `size` (like 10G) (pure)."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), size]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The guest CPU under TCG: x86-64-v2 (SSE4.2, POPCNT), what NumPy 2 needs.
TCG_CPU_MODEL = "Nehalem"


def netdev_arg(forwards: dict[int, int], restrict: bool) -> str:
    """qemu user-network options: forwards bound to 127.0.0.1, optionally restricted."""
    parts = ["user", "id=net0"]
    if restrict:
        parts.append("restrict=on")
    parts += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in sorted(forwards.items())]
    return ",".join(parts)


def cpu_model(accelerator: str) -> str:
    """The guest CPU model for `accelerator` (pure): the host's own CPU under KVM;
    under TCG, Nehalem, the x86-64-v2 level. qemu's default (qemu64) lacks SSE4.2
    and POPCNT, and NumPy 2 dies on it with "invalid opcode" at import; `max`
    turns on 5-level paging and more, and a guest kernel double-faulted under it
    (qemu 7.2, measured here)."""
    return "host" if accelerator == "kvm" else TCG_CPU_MODEL


def qemu_command(spec: VmSpec) -> list[str]:
    """The qemu command line that boots `spec` (pure)."""
    snapshot = ",snapshot=on" if spec.snapshot else ""
    cmd = [
        "qemu-system-x86_64", "-name", "hubkiln", "-machine", "q35",
        "-accel", spec.accelerator, "-cpu", cpu_model(spec.accelerator),
        "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        "-display", "none", "-monitor", "none", "-serial", f"file:{spec.serial_log}",
        "-drive", f"file={spec.image},if=virtio,format=qcow2,discard=unmap{snapshot}",
        "-netdev", netdev_arg(spec.forwards, spec.restrict_network),
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        # A guest kernel panic ends qemu (the guest's pvpanic driver tells it), instead
        # of leaving a dead guest that every test waits on until its timeout.
        "-device", "pvpanic-pci", "-action", "panic=exit-failure",
    ]
    if spec.data_disk:
        cmd += data_disk_args(spec.data_disk)
    for disk in spec.extra_disks:
        cmd += ["-drive", f"file={disk},if=virtio,format=qcow2"]
    if spec.seed_iso:
        cmd += ["-drive", f"file={spec.seed_iso},if=virtio,format=raw,readonly=on"]
    if spec.firmware == "uefi":
        if spec.uefi_vars is None:
            raise ValueError("UEFI boot needs a writable copy of OVMF_VARS.fd (uefi_vars)")
        cmd += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={spec.uefi_vars}",
        ]
    return cmd


PANIC_MARK = "Kernel panic - not syncing"
#: The first line of a kernel oops or BUG, which says what went wrong.
OOPS_LINE = re.compile(r"\] ((?:\S+: \d{4} \[#\d+\]|BUG: |kernel BUG |general protection).*)")


def find_kernel_panic(console: str) -> str | None:
    """What a guest kernel panic on the serial console says, in one line: the oops that
    led to it and the panic's reason; None when the kernel did not panic (pure)."""
    lines = console.splitlines()
    panic = next((i for i, line in enumerate(lines) if PANIC_MARK in line), None)
    if panic is None:
        return None
    reason = lines[panic][lines[panic].index(PANIC_MARK):].strip()
    oops = next((m.group(1).strip() for line in lines[:panic]
                 if (m := OOPS_LINE.search(line))), None)
    return f"{oops}; {reason}" if oops else reason


def ssh_command(port: int, user: str, key: Path, command: str, *, timeout: int = 10) -> list[str]:
    """ssh to a local guest: key only, no host-key bookkeeping (guests are throwaway)."""
    return [
        "ssh", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={timeout}",
        "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", str(port), f"{user}@127.0.0.1",
        command,
    ]


class Vm:
    """A running guest. Use as a context manager: it is always stopped on exit."""

    def __init__(self, spec: VmSpec):
        self.spec = spec
        self.process: Child | None = None
        self._output: IO | None = None

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        if spec.firmware == "uefi" and spec.uefi_vars and not spec.uefi_vars.exists():
            shutil.copyfile(OVMF_VARS, spec.uefi_vars)
        spec.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self._output = open(self.output_log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = Child(qemu_command(spec), output=self._output, name="qemu",
                             stop_signals=((signal.SIGTERM, 5.0),))

    @property
    def output_log(self) -> Path:
        """What qemu itself prints (a refused option, a failed device), beside the console."""
        return self.spec.serial_log.with_name(self.spec.serial_log.stem + "-qemu.log")

    def output(self) -> str:
        try:
            return self.output_log.read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and not self.process.exited()

    def kernel_panic(self) -> str | None:
        """The guest kernel's panic, as its console showed it (find_kernel_panic)."""
        try:
            return find_kernel_panic(self.spec.serial_log.read_text(errors="replace"))
        except FileNotFoundError:
            return None

    def serial_tail(self, lines: int = 25) -> str:
        try:
            text = self.spec.serial_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no serial output)"
        return "\n".join(text.splitlines()[-lines:])

    def ssh(self, user: str, key: Path, command: str, *, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `command` in the guest over the forwarded SSH port."""
        port = self.spec.forwards[22]
        result = subprocess.run(ssh_command(port, user, key, command), capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise BuildError(f"in the VM, `{command}` failed ({result.returncode}):\n"
                             f"{(result.stdout + result.stderr).strip()}")
        return result

    def wait_for_ssh(self, user: str, key: Path, timeout: float = 600) -> float:
        """Wait until SSH accepts `key`; return seconds waited. Raise with the console tail."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise BuildError(f"the VM stopped before SSH answered:\n{self.output()}\n"
                                 f"{self.serial_tail()}")
            result = self.ssh(user, key, "true", timeout=30, check=False)
            if result.returncode == 0:
                return time.monotonic() - started
            time.sleep(3)
        raise BuildError(
            f"SSH did not answer within {timeout:.0f}s; the console ended with:\n"
            f"{self.serial_tail()}",
            hint=f"see the whole console log in {self.spec.serial_log}",
        )

    def power_off(self, user: str, key: Path, timeout: float = 180) -> bool:
        """Shut the guest down from inside (file systems unmounted cleanly, as before an
        OS disk swap) and wait for qemu to exit; True when it did within `timeout`."""
        if not self.alive():
            return True
        # The connection drops while the guest goes down: its status says nothing.
        self.ssh(user, key, "sudo -n systemctl poweroff", check=False, timeout=60)
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Stop qemu and everything it started (SIGTERM, 5 s, SIGKILL); never leave a guest
        running."""
        if self.process:
            try:
                self.process.end()
            finally:
                self.process = None
        if self._output:
            self._output.close()
            self._output = None
