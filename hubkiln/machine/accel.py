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
5. anything else (an unknown KVM module) -> a probe boots a tiny guest under
   KVM (probe.py, under a second), and KVM is used only if it runs to the end.

`decide_accelerator` is pure (unit-tested with fabricated `HostFacts`);
`gather_host_facts` reads the host below a root directory (tests fake it).

Limits: the probe has not yet run on a host with working KVM. Module detection
reads `/sys/module`, which lists loaded modules and built-in modules that have
parameters; a KVM built into the kernel without parameters counts as "unknown".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hubkiln.errors import PreflightError
from hubkiln.machine.probe import ProbeResult, probe_kvm

#: Environment variable that overrides the choice: kvm, tcg or auto.
ACCEL_ENV = "HUBKILN_ACCEL"

ACCELERATORS = ("kvm", "tcg")

#: KVM modules that accept `-accel kvm` but cannot boot a stock guest kernel.
KNOWN_BAD_KVM_MODULES = frozenset({"kvm_pvm"})

#: KVM modules backed by hardware virtualisation (VT-x / AMD-V).
KNOWN_GOOD_KVM_MODULES = frozenset({"kvm_intel", "kvm_amd"})


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


def choose_accelerator(override: str | None = None, *, probe: bool = True) -> AccelChoice:
    """Detect the host and choose the accelerator; an unknown KVM module is probed (a tiny
    guest boots under KVM) unless `probe` is false."""
    wanted = normalise_override(override)
    facts = gather_host_facts()
    if wanted == "auto" and probe and needs_probe(facts):
        facts = replace(facts, probe=probe_kvm())
    return decide_accelerator(facts, None if wanted == "auto" else wanted)


# --- probe boot -------------------------------------------------------------


