"""Choose the qemu accelerator (KVM or TCG) by detecting what the host can do.

`/dev/kvm` existing does not mean KVM works: some hosts (nested sandboxes)
expose a paravirtual KVM (`kvm_pvm`) that accepts `-accel kvm` but cannot run
a stock guest kernel - the guest dies with "KVM internal error ... emulation
failure" and Packer then waits for SSH until its timeout. So the choice is:

1. an explicit override (`override` argument, else env `HUBKILN_ACCEL`):
   `kvm`, `tcg` or `auto`;
2. no `/dev/kvm`, or not read-writable by us -> tcg;
3. a known-bad KVM module loaded (`kvm_pvm`) -> tcg;
4. `kvm_intel` or `kvm_amd` loaded -> kvm;
5. anything else -> tcg, unless `probe=True`, which boots a tiny guest
   under KVM and uses KVM only if that guest runs to completion.

`decide_accelerator` is pure (unit-tested with fabricated `HostFacts`);
`gather_host_facts` reads the host below a root directory (tests fake it).

The probe (`probe_accelerator`) boots a 64 KiB hand-assembled firmware image
(`-bios`, no disk, no network, no download): it walks real mode -> protected
mode -> long mode, writing a marker letter to the serial port at each stage,
then runs a VEX-encoded `shlx` (BMI2) - the instruction class the stock
Ubuntu kernel decompressor uses and that kvm_pvm's emulator fails on - and
exits through qemu's `isa-debug-exit` device. It takes about 0.1 s under TCG;
on kvm_pvm it fails in about 0.3 s (qemu prints "KVM internal error", then
pauses the guest, so the probe kills it).

Limits: the probe proves only that KVM runs this guest code under qemu's
default CPU model; if that model does not advertise BMI2 the VEX step is
skipped (the result says so). A KVM that runs this code but fails on other
instructions would pass. Not yet run on a host with working KVM. Module
detection reads `/sys/module`, which
lists loaded modules and built-in modules that have parameters; a KVM built
into the kernel without parameters counts as "unknown".
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hubkiln.errors import PreflightError

#: Environment variable that overrides the choice: kvm, tcg or auto.
ACCEL_ENV = "HUBKILN_ACCEL"

ACCELERATORS = ("kvm", "tcg")

#: KVM modules that accept `-accel kvm` but cannot boot a stock guest kernel.
KNOWN_BAD_KVM_MODULES = frozenset({"kvm_pvm"})

#: KVM modules backed by hardware virtualisation (VT-x / AMD-V).
KNOWN_GOOD_KVM_MODULES = frozenset({"kvm_intel", "kvm_amd"})

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a probe boot: did the guest run to the end, and what happened."""

    works: bool
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True)
class HostFacts:
    """What the host tells us about KVM; `probe` is set only if a probe ran."""

    kvm_device: bool
    kvm_device_usable: bool
    kvm_modules: frozenset[str]
    probe: ProbeResult | None = None


@dataclass(frozen=True)
class AccelChoice:
    """The chosen accelerator ('kvm' or 'tcg') and why it was chosen."""

    name: str
    reason: str

    @property
    def packer_accelerator(self) -> str:
        """Value for the Packer qemu builder's `accelerator` setting."""
        return self.name

    def qemu_args(self) -> list[str]:
        """Arguments that select this accelerator on a qemu command line."""
        return ["-accel", self.name]


def gather_host_facts(
    sys_root: Path = Path("/"),
    *,
    access: Callable[[Path, int], bool] = os.access,
) -> HostFacts:
    """Read `/dev/kvm` and the kvm* entries of `/sys/module` below `sys_root`."""
    device = sys_root / "dev" / "kvm"
    exists = device.exists()
    usable = exists and access(device, os.R_OK | os.W_OK)
    module_dir = sys_root / "sys" / "module"
    modules: frozenset[str] = frozenset()
    if module_dir.is_dir():
        modules = frozenset(p.name for p in module_dir.iterdir() if p.name.startswith("kvm"))
    return HostFacts(kvm_device=exists, kvm_device_usable=usable, kvm_modules=modules)


def normalise_override(override: str | None, env: dict[str, str] | None = None) -> str:
    """Return 'kvm', 'tcg' or 'auto' from `override`, falling back to $HUBKILN_ACCEL."""
    environ = os.environ if env is None else env
    value = (override or "").strip().lower()
    source = "override"
    if value in ("", "auto"):
        value = environ.get(ACCEL_ENV, "").strip().lower()
        source = ACCEL_ENV
    if value in ("", "auto"):
        return "auto"
    if value not in ACCELERATORS:
        raise PreflightError(
            f"unknown accelerator {value!r} (from {source})",
            hint=f"use one of: kvm, tcg, auto (for example {ACCEL_ENV}=tcg)",
        )
    return value


def needs_probe(facts: HostFacts) -> bool:
    """True if only a probe boot can tell whether KVM works on this host."""
    return (
        facts.kvm_device_usable
        and not (facts.kvm_modules & KNOWN_BAD_KVM_MODULES)
        and not (facts.kvm_modules & KNOWN_GOOD_KVM_MODULES)
    )


def decide_accelerator(facts: HostFacts, override: str | None = None) -> AccelChoice:
    """Pure decision: pick 'kvm' or 'tcg' from `facts`; `override` is kvm/tcg/auto/None.

    Raises PreflightError if KVM is forced but `/dev/kvm` is missing or unusable.
    """
    forced = override if override in ACCELERATORS else None
    if forced == "tcg":
        return AccelChoice("tcg", "tcg requested explicitly")
    if forced == "kvm":
        if not facts.kvm_device:
            raise PreflightError(
                "KVM was requested but /dev/kvm does not exist",
                hint="enable virtualisation (VT-x/AMD-V) and load kvm_intel or kvm_amd, "
                f"or use {ACCEL_ENV}=tcg",
            )
        if not facts.kvm_device_usable:
            raise PreflightError(
                "KVM was requested but /dev/kvm is not readable and writable by this user",
                hint="add yourself to the 'kvm' group (sudo adduser $USER kvm, then log in "
                f"again), or use {ACCEL_ENV}=tcg",
            )
        bad = sorted(facts.kvm_modules & KNOWN_BAD_KVM_MODULES)
        note = f" (warning: {', '.join(bad)} is loaded and may not boot a stock kernel)"
        return AccelChoice("kvm", "kvm requested explicitly" + (note if bad else ""))

    if not facts.kvm_device:
        return AccelChoice("tcg", "/dev/kvm does not exist")
    if not facts.kvm_device_usable:
        return AccelChoice(
            "tcg", "/dev/kvm is not readable and writable by this user (join the 'kvm' group)"
        )
    bad = sorted(facts.kvm_modules & KNOWN_BAD_KVM_MODULES)
    if bad:
        return AccelChoice(
            "tcg", f"{', '.join(bad)} is a paravirtual KVM that cannot boot a stock kernel"
        )
    good = sorted(facts.kvm_modules & KNOWN_GOOD_KVM_MODULES)
    if good:
        return AccelChoice("kvm", f"hardware KVM available ({', '.join(good)})")
    modules = ", ".join(sorted(facts.kvm_modules)) or "none found in /sys/module"
    if facts.probe is None:
        return AccelChoice(
            "tcg",
            f"unrecognised KVM (modules: {modules}) and no probe was run; "
            f"probe it or set {ACCEL_ENV}=kvm",
        )
    if facts.probe.works:
        return AccelChoice("kvm", f"probe boot under KVM succeeded ({facts.probe.detail})")
    return AccelChoice("tcg", f"probe boot under KVM failed: {facts.probe.detail}")


def choose_accelerator(override: str | None = None, *, probe: bool = False) -> AccelChoice:
    """Detect the host and choose the accelerator; `probe=True` may boot a tiny guest."""
    wanted = normalise_override(override)
    facts = gather_host_facts()
    if wanted == "auto" and probe and needs_probe(facts):
        facts = replace(facts, probe=probe_kvm())
    return decide_accelerator(facts, None if wanted == "auto" else wanted)


# --- probe boot -------------------------------------------------------------

#: The probe firmware: (machine code as hex, GNU as source). Running `as --32`
#: on the joined source reproduces the bytes (tests check this when binutils
#: is installed). It is mapped at 0xF0000; the reset vector jumps to offset 0.
#: Serial output: R (real mode), P (protected mode), L (long mode), then V if
#: the VEX `shlx` ran (0x2b << 1 = 'V') or - if the CPU lacks BMI2, then "\n".
PROBE_PROGRAM: tuple[tuple[str, str], ...] = (
    ("", ".code16"),
    ("", "start:"),
    ("fa", "cli"),
    ("baf803", "mov $0x3f8, %dx"),  # COM1
    ("b052", "mov $0x52, %al"),  # 'R'
    ("ee", "out %al, %dx"),
    ("b800f0", "mov $0xf000, %ax"),  # copy GDT + descriptor from ROM to RAM 0x500:
    ("8ed8", "mov %ax, %ds"),  # (on kvm_pvm a far jump through a GDT in ROM hangs)
    ("31c0", "xor %ax, %ax"),
    ("8ec0", "mov %ax, %es"),
    ("bee800", "mov $gdt, %si"),
    ("bf0005", "mov $0x500, %di"),
    ("b92600", "mov $0x26, %cx"),
    ("fc", "cld"),
    ("f3a4", "rep movsb"),
    ("8ed8", "mov %ax, %ds"),
    ("660f01162005", "lgdtl 0x520"),
    ("0f20c0", "mov %cr0, %eax"),
    ("0c01", "or $1, %al"),  # CR0.PE
    ("0f22c0", "mov %eax, %cr0"),
    ("66ea34000f000800", "ljmpl $0x08, $0xf0000 + pm32"),
    ("", ".code32"),
    ("", "pm32:"),
    ("66b81000", "mov $0x10, %ax"),
    ("8ed8", "mov %ax, %ds"),
    ("8ec0", "mov %ax, %es"),
    ("8ed0", "mov %ax, %ss"),
    ("b050", "mov $0x50, %al"),  # 'P'
    ("ee", "out %al, %dx"),
    ("bf00100000", "mov $0x1000, %edi"),  # zero 3 pages of page tables at 0x1000
    ("31c0", "xor %eax, %eax"),
    ("b9000c0000", "mov $0xc00, %ecx"),
    ("f3ab", "rep stosl"),
    ("c7050010000003200000", "movl $0x2003, 0x1000"),  # PML4[0] -> PDPT
    ("c7050020000003300000", "movl $0x3003, 0x2000"),  # PDPT[0] -> PD
    ("c7050030000083000000", "movl $0x83, 0x3000"),  # PD[0] = 2 MiB identity page
    ("b820000000", "mov $0x20, %eax"),  # CR4.PAE
    ("0f22e0", "mov %eax, %cr4"),
    ("b800100000", "mov $0x1000, %eax"),
    ("0f22d8", "mov %eax, %cr3"),
    ("b9800000c0", "mov $0xc0000080, %ecx"),  # EFER.LME
    ("0f32", "rdmsr"),
    ("0d00010000", "or $0x100, %eax"),
    ("0f30", "wrmsr"),
    ("0f20c0", "mov %cr0, %eax"),
    ("0d00000080", "or $0x80000000, %eax"),  # CR0.PG
    ("0f22c0", "mov %eax, %cr0"),
    ("ea9d000f001800", "ljmp $0x18, $0xf0000 + lm64"),
    ("", ".code64"),
    ("", "lm64:"),
    ("66baf803", "mov $0x3f8, %dx"),
    ("b04c", "mov $0x4c, %al"),  # 'L'
    ("ee", "out %al, %dx"),
    ("31c0", "xor %eax, %eax"),
    ("0fa2", "cpuid"),
    ("b32d", "mov $0x2d, %bl"),  # '-' unless BMI2 is advertised
    ("83f807", "cmp $7, %eax"),
    ("7222", "jb report"),
    ("b807000000", "mov $7, %eax"),
    ("31c9", "xor %ecx, %ecx"),
    ("0fa2", "cpuid"),
    ("89d8", "mov %ebx, %eax"),
    ("b32d", "mov $0x2d, %bl"),
    ("0fbae008", "bt $8, %eax"),  # CPUID.7.0:EBX.BMI2
    ("730f", "jnc report"),
    ("bb2b000000", "mov $0x2b, %ebx"),
    ("b901000000", "mov $1, %ecx"),
    ("c4e271f7db", "shlx %ecx, %ebx, %ebx"),  # VEX-encoded: 0x2b << 1 = 'V'
    ("", "report:"),
    ("66baf803", "mov $0x3f8, %dx"),
    ("88d8", "mov %bl, %al"),
    ("ee", "out %al, %dx"),
    ("b00a", "mov $0x0a, %al"),
    ("ee", "out %al, %dx"),
    ("b001", "mov $1, %al"),  # isa-debug-exit: qemu exits with (1 << 1) | 1 = 3
    ("e6f4", "out %al, $0xf4"),
    ("", "halt:"),
    ("f4", "hlt"),
    ("ebfd", "jmp halt"),
    ("000000000000", ".balign 8, 0"),
    ("", "gdt:"),
    ("0000000000000000", ".quad 0"),
    ("ffff0000009acf00", ".quad 0x00cf9a000000ffff"),  # 0x08: 32-bit code
    ("ffff00000092cf00", ".quad 0x00cf92000000ffff"),  # 0x10: data
    ("ffff0000009aaf00", ".quad 0x00af9a000000ffff"),  # 0x18: 64-bit code
    ("1f00", ".word 0x1f"),  # GDT descriptor, as copied to 0x520
    ("00050000", ".long 0x500"),
)

#: qemu's exit status when the probe guest writes 1 to isa-debug-exit.
PROBE_EXIT_STATUS = 3
#: Marker qemu prints (on stderr) when KVM cannot execute guest code.
KVM_INTERNAL_ERROR = "KVM internal error"

_ROM_SIZE = 0x10000
_RESET_VECTOR = 0xFFF0
_STAGES = {"R": "real mode", "P": "protected mode", "L": "long mode"}


def probe_program_bytes() -> bytes:
    """Return the probe's machine code (without ROM padding)."""
    return b"".join(bytes.fromhex(code) for code, _ in PROBE_PROGRAM)


def probe_rom() -> bytes:
    """Return the 64 KiB `-bios` image: program at 0, `ljmp $0xf000, $0` at 0xFFF0."""
    code = probe_program_bytes()
    rom = bytearray(_ROM_SIZE)
    rom[: len(code)] = code
    rom[_RESET_VECTOR : _RESET_VECTOR + 5] = bytes.fromhex("ea000000f0")
    return bytes(rom)


def probe_command(
    rom: Path, accel: str = "kvm", *, qemu: str = QEMU, cpu: str | None = None
) -> list[str]:
    """Build the qemu command line that boots the probe ROM with `accel`."""
    argv = [
        qemu,
        "-accel", accel,
        "-machine", "pc",
        "-m", "16",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-bios", str(rom),
    ]  # fmt: skip
    if cpu:
        argv[1:1] = ["-cpu", cpu]
    return argv


def interpret_probe(
    serial: str, messages: str, status: int | None, timeout: float = 0.0
) -> ProbeResult:
    """Pure: judge a probe run from its serial output, qemu's stderr and exit status.

    `status` is None when qemu was killed (KVM internal error or timeout).
    """
    reached = [_STAGES[c] for c in serial if c in _STAGES]
    where = f"guest reached {reached[-1]}" if reached else "guest produced no output"
    if KVM_INTERNAL_ERROR in messages:
        failure = "emulation failure" if "emulation failure" in messages else "internal error"
        return ProbeResult(False, f"{KVM_INTERNAL_ERROR} ({failure}); {where}")
    if status == PROBE_EXIT_STATUS and serial.startswith("RPL") and len(serial) >= 4:
        if serial[3] == "V":
            return ProbeResult(True, "guest ran real, protected and long mode and VEX code")
        return ProbeResult(
            True, "guest ran real, protected and long mode (CPU model lacks BMI2; VEX not tested)"
        )
    if status is None:
        return ProbeResult(False, f"guest did not finish within {timeout:g} s; {where}")
    last = messages.strip().splitlines()[-1:] or ["no message"]
    return ProbeResult(False, f"qemu exited with status {status}: {last[0]}; {where}")


def probe_accelerator(
    accel: str = "kvm",
    *,
    timeout: float = 20.0,
    qemu: str = QEMU,
    cpu: str | None = None,
) -> ProbeResult:
    """Boot the probe ROM with `accel` and report whether the guest ran to the end.

    qemu runs in its own process group, which is always killed before returning.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubkiln-probe-") as tmp:
        rom = Path(tmp) / "probe.rom"
        rom.write_bytes(probe_rom())
        argv = probe_command(rom, accel, qemu=qemu, cpu=cpu)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return ProbeResult(False, f"cannot run {qemu}: {exc}")
        try:
            serial, messages, status = _collect_probe_output(proc, started + timeout)
        finally:
            _kill_group(proc)
    result = interpret_probe(serial, messages, status, timeout)
    return replace(result, seconds=round(time.monotonic() - started, 3))


def probe_kvm(timeout: float = 20.0) -> ProbeResult:
    """Probe whether `-accel kvm` can actually run guest code on this host."""
    return probe_accelerator("kvm", timeout=timeout)


def _collect_probe_output(
    proc: subprocess.Popen[bytes], deadline: float
) -> tuple[str, str, int | None]:
    """Read qemu's stdout (serial) and stderr until exit, KVM error or `deadline`."""
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    open_fds = set(chunks)
    with selectors.DefaultSelector() as sel:
        for fd in open_fds:
            sel.register(fd, selectors.EVENT_READ)
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(min(remaining, 0.5)):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
            stderr_text = b"".join(chunks[proc.stderr.fileno()])
            if KVM_INTERNAL_ERROR.encode() in stderr_text:
                time.sleep(0.2)  # let qemu finish printing the register dump
                _drain(proc.stderr.fileno(), chunks[proc.stderr.fileno()])
                break
    serial = b"".join(chunks[proc.stdout.fileno()]).decode("ascii", "replace")
    messages = b"".join(chunks[proc.stderr.fileno()]).decode("utf-8", "replace")
    if KVM_INTERNAL_ERROR in messages:
        return serial, messages, None  # qemu pauses the guest rather than exiting
    return serial, messages, _wait_briefly(proc, deadline)


def _drain(fd: int, into: list[bytes]) -> None:
    """Append whatever is readable on `fd` right now without blocking."""
    os.set_blocking(fd, False)
    try:
        while data := os.read(fd, 65536):
            into.append(data)
    except BlockingIOError:
        pass  # nothing more to read now; that is all we wanted


def _wait_briefly(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """Return qemu's exit status if it exits before `deadline` (at most 1 s), else None."""
    try:
        return proc.wait(timeout=max(0.0, min(deadline - time.monotonic(), 1.0)))
    except subprocess.TimeoutExpired:
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL qemu's process group unless qemu already exited, then reap it."""
    if proc.returncode is None:
        # ProcessLookupError: qemu exited since our last check, nothing left to kill.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
