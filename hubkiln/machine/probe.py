"""The KVM probe: boot a 64 KiB hand-assembled firmware under KVM and see it run to the end.

It boots with `-bios` (no disk, no network, no download) and walks real mode ->
protected mode -> long mode, writing a marker letter to the serial port at each
stage, then runs a VEX-encoded `shlx` (BMI2), the instruction class the stock
Ubuntu kernel decompressor uses and that kvm_pvm's emulator fails on, and exits
through qemu's `isa-debug-exit` device. It takes about 0.1 s under TCG; on kvm_pvm
it fails in about 0.3 s (qemu prints "KVM internal error", then pauses the guest,
so the probe stops it). accel.choose_accelerator runs it only when the host's KVM
module is one it does not know.

Limits: the probe proves only that KVM runs this guest code under qemu's default
CPU model; if that model does not advertise BMI2 the VEX step is skipped (the result
says so). A KVM that runs this code but fails on other instructions would pass.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from hubkiln.proc import Child

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a probe boot: did the guest run to the end, and what happened."""

    works: bool
    detail: str
    seconds: float = 0.0


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

    qemu is a proc.Child: its process group is always gone before this returns."""
    started = time.monotonic()
    deadline = started + timeout
    serial: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hubkiln-probe-") as tmp:
        rom, stderr_file = Path(tmp) / "probe.rom", Path(tmp) / "qemu-messages"
        rom.write_bytes(probe_rom())
        argv = probe_command(rom, accel, qemu=qemu, cpu=cpu)
        with open(stderr_file, "wb") as stderr:
            try:
                child = Child(argv, on_line=serial.append, stderr=stderr, stop_signals=())
            except OSError as exc:
                return ProbeResult(False, f"cannot run {qemu}: {exc}")
            with child:
                # After a KVM internal error qemu pauses the guest rather than exiting.
                while not child.pump(min(deadline, time.monotonic() + 0.2)):
                    said = stderr_file.read_text("utf-8", "replace")
                    if KVM_INTERNAL_ERROR in said or time.monotonic() >= deadline:
                        time.sleep(0.2)  # let qemu finish printing the register dump
                        child.stop()  # no signal to try first: SIGKILL
                        break
        messages = stderr_file.read_text("utf-8", "replace")
    returned = child.returncode
    status = None if returned is None or returned < 0 else returned
    result = interpret_probe("".join(serial), messages, status, timeout)
    return replace(result, seconds=round(time.monotonic() - started, 3))


def probe_kvm(timeout: float = 20.0) -> ProbeResult:
    """Probe whether `-accel kvm` can actually run guest code on this host."""
    return probe_accelerator("kvm", timeout=timeout)
