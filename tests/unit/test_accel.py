"""Accelerator choice: the pure decision with fabricated host facts, and the probe boot.

The probe tests that boot qemu need `qemu-system-x86_64` and take well under
a second each; the KVM probe test runs only on a host with kvm_pvm, where it
must report KVM as broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hubkiln.errors import PreflightError
from hubkiln.machine import accel, probe
from hubkiln.machine.accel import (
    AccelChoice,
    HostFacts,
    decide_accelerator,
    gather_host_facts,
    needs_probe,
    normalise_override,
)
from hubkiln.machine.probe import ProbeResult, interpret_probe

HAVE_QEMU = shutil.which(probe.QEMU) is not None


def facts(*modules: str, device: bool = True, usable: bool = True, probe=None) -> HostFacts:
    return HostFacts(
        kvm_device=device,
        kvm_device_usable=device and usable,
        kvm_modules=frozenset(modules),
        probe=probe,
    )


# --- decide_accelerator: every branch -------------------------------------------


def test_no_dev_kvm_means_tcg():
    choice = decide_accelerator(facts("kvm", "kvm_intel", device=False))
    assert choice == AccelChoice("tcg", "/dev/kvm does not exist")


def test_unusable_dev_kvm_means_tcg():
    choice = decide_accelerator(facts("kvm", "kvm_intel", usable=False))
    assert choice.name == "tcg"
    assert "kvm' group" in choice.reason


def test_paravirtual_kvm_means_tcg():
    choice = decide_accelerator(facts("kvm", "kvm_pvm"))
    assert choice.name == "tcg"
    assert "kvm_pvm" in choice.reason


def test_known_bad_module_wins_over_a_good_one():
    assert decide_accelerator(facts("kvm", "kvm_pvm", "kvm_intel")).name == "tcg"


@pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd"])
def test_hardware_kvm_means_kvm(module):
    choice = decide_accelerator(facts("kvm", module))
    assert choice.name == "kvm"
    assert module in choice.reason


def test_unknown_kvm_without_probe_means_tcg():
    choice = decide_accelerator(facts("kvm"))
    assert choice.name == "tcg"
    assert "no probe" in choice.reason and "HUBKILN_ACCEL=kvm" in choice.reason


def test_unknown_kvm_with_a_working_probe_means_kvm():
    choice = decide_accelerator(facts("kvm", probe=ProbeResult(True, "guest ran")))
    assert choice.name == "kvm"
    assert "guest ran" in choice.reason


def test_unknown_kvm_with_a_failed_probe_means_tcg():
    choice = decide_accelerator(facts(probe=ProbeResult(False, "KVM internal error")))
    assert choice.name == "tcg"
    assert "KVM internal error" in choice.reason


def test_forced_tcg_ignores_a_working_kvm():
    assert decide_accelerator(facts("kvm_intel"), "tcg") == AccelChoice(
        "tcg", "tcg requested explicitly"
    )


def test_forced_kvm_is_honoured_even_with_kvm_pvm_but_warns():
    choice = decide_accelerator(facts("kvm", "kvm_pvm"), "kvm")
    assert choice.name == "kvm"
    assert "warning" in choice.reason and "kvm_pvm" in choice.reason


def test_forced_kvm_on_a_good_host_has_no_warning():
    assert decide_accelerator(facts("kvm_amd"), "kvm").reason == "kvm requested explicitly"


def test_forced_kvm_without_dev_kvm_fails_with_a_hint():
    with pytest.raises(PreflightError) as err:
        decide_accelerator(facts(device=False), "kvm")
    assert "does not exist" in err.value.message
    assert "HUBKILN_ACCEL=tcg" in err.value.hint


def test_forced_kvm_with_unusable_dev_kvm_fails_with_a_hint():
    with pytest.raises(PreflightError) as err:
        decide_accelerator(facts("kvm_intel", usable=False), "kvm")
    assert "kvm" in err.value.hint and "adduser" in err.value.hint


def test_auto_and_none_mean_detect():
    assert decide_accelerator(facts("kvm_intel"), "auto").name == "kvm"
    assert decide_accelerator(facts("kvm_intel"), None).name == "kvm"


def test_needs_probe_only_for_unrecognised_usable_kvm():
    assert needs_probe(facts("kvm"))
    assert needs_probe(facts())
    assert not needs_probe(facts("kvm", "kvm_intel"))
    assert not needs_probe(facts("kvm", "kvm_pvm"))
    assert not needs_probe(facts("kvm", device=False))
    assert not needs_probe(facts("kvm", usable=False))


def test_choice_gives_packer_and_qemu_values():
    choice = AccelChoice("tcg", "why")
    assert choice.packer_accelerator == "tcg"
    assert choice.qemu_args() == ["-accel", "tcg"]


# --- override normalisation -------------------------------------------------------


def test_override_argument_wins_over_the_environment():
    assert normalise_override("kvm", {"HUBKILN_ACCEL": "tcg"}) == "kvm"


@pytest.mark.parametrize("override", [None, "", "auto", "AUTO"])
def test_environment_is_used_when_override_is_auto(override):
    assert normalise_override(override, {"HUBKILN_ACCEL": " TCG "}) == "tcg"


def test_nothing_set_means_auto():
    assert normalise_override(None, {}) == "auto"
    assert normalise_override(None, {"HUBKILN_ACCEL": "auto"}) == "auto"


def test_unknown_accelerator_names_its_source():
    with pytest.raises(PreflightError, match="from HUBKILN_ACCEL"):
        normalise_override(None, {"HUBKILN_ACCEL": "hvf"})
    with pytest.raises(PreflightError, match="from override"):
        normalise_override("xen", {})


# --- gather_host_facts on a fake tree ------------------------------------------------


def fake_root(tmp_path: Path, *modules: str, device: bool = True) -> Path:
    if device:
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / "kvm").write_text("")
    for name in modules:
        (tmp_path / "sys" / "module" / name).mkdir(parents=True)
    return tmp_path


def test_gather_reads_dev_kvm_and_kvm_modules(tmp_path):
    root = fake_root(tmp_path, "kvm", "kvm_pvm", "loop", "ext4")
    assert gather_host_facts(root) == facts("kvm", "kvm_pvm")


def test_gather_without_dev_kvm_or_sys_module(tmp_path):
    assert gather_host_facts(tmp_path) == facts(device=False)


def test_gather_checks_read_write_access(tmp_path):
    root = fake_root(tmp_path, "kvm_intel")
    seen = []

    def no_access(path, mode):
        seen.append((path, mode))
        return False

    assert gather_host_facts(root, access=no_access) == facts("kvm_intel", usable=False)
    assert seen == [(root / "dev" / "kvm", os.R_OK | os.W_OK)]


# --- choose_accelerator wiring ---------------------------------------------------------


@pytest.fixture
def host(monkeypatch):
    """Fake host: set `state['facts']`; records whether the probe ran."""
    state = {"facts": facts("kvm"), "probed": 0}
    monkeypatch.delenv("HUBKILN_ACCEL", raising=False)
    monkeypatch.setattr(accel, "gather_host_facts", lambda: state["facts"])

    def fake_probe():
        state["probed"] += 1
        return ProbeResult(True, "fake probe")

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    return state


def test_an_unknown_kvm_is_probed_unless_told_not_to(host):
    assert accel.choose_accelerator(probe=False).name == "tcg"
    assert host["probed"] == 0
    assert accel.choose_accelerator().name == "kvm"
    assert host["probed"] == 1
    host["facts"] = facts("kvm", "kvm_pvm")  # known bad: no probe needed
    assert accel.choose_accelerator().name == "tcg"
    assert host["probed"] == 1


def test_choose_honours_the_environment(host, monkeypatch):
    host["facts"] = facts("kvm_intel")
    monkeypatch.setenv("HUBKILN_ACCEL", "tcg")
    assert accel.choose_accelerator().reason == "tcg requested explicitly"
    assert accel.choose_accelerator("kvm").name == "kvm"
    assert host["probed"] == 0


# --- the probe image and command -------------------------------------------------------


def test_probe_rom_layout():
    rom = probe.probe_rom()
    code = probe.probe_program_bytes()
    assert len(rom) == 0x10000
    assert rom[: len(code)] == code
    assert rom[0xFFF0:0xFFF5] == bytes.fromhex("ea000000f0")  # ljmp $0xf000, $0
    assert len(code) < 0x200
    # The GDT copied to 0x500 starts where `mov $gdt, %si` says (0xe8) and holds 0x26 bytes.
    assert code[0x10:0x13] == bytes.fromhex("bee800")
    assert code[0xE8 : 0xE8 + 0x26][-6:] == bytes.fromhex("1f0000050000")


@pytest.mark.skipif(
    not (shutil.which("as") and shutil.which("objcopy")), reason="needs binutils (as, objcopy)"
)
def test_probe_bytes_match_their_assembly_source(tmp_path):
    source = "\n".join(asm for _, asm in probe.PROBE_PROGRAM) + "\n"
    (tmp_path / "probe.S").write_text(source)
    subprocess.run(["as", "--32", "-o", "probe.o", "probe.S"], cwd=tmp_path, check=True)
    subprocess.run(["objcopy", "-O", "binary", "probe.o", "probe.bin"], cwd=tmp_path, check=True)
    assert (tmp_path / "probe.bin").read_bytes() == probe.probe_program_bytes()


def test_probe_command():
    argv = probe.probe_command(Path("/tmp/p.rom"), "kvm")
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-bios") + 1] == "/tmp/p.rom"
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in argv
    assert "-cpu" not in argv
    with_cpu = probe.probe_command(Path("p.rom"), "tcg", qemu="/opt/qemu", cpu="max")
    assert with_cpu[:3] == ["/opt/qemu", "-cpu", "max"]


# --- interpret_probe -----------------------------------------------------------------------

# What qemu 7.2 printed on this project's kvm_pvm host (trimmed register dump).
PVM_STDERR = """\
qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]
KVM internal error. Suberror: 1
extra data[0]: 0x0000000000000001
extra data[1]: 0xba66dbf771e2c40f
emulation failure
RAX=0000000000000001 RBX=000000000000002b RCX=0000000000000001 RDX=0000000000000000
"""


def test_kvm_internal_error_means_broken():
    result = interpret_probe("RPL", PVM_STDERR, None)
    assert not result.works
    assert result.detail == "KVM internal error (emulation failure); guest reached long mode"


def test_complete_run_with_vex_works():
    result = interpret_probe("RPLV\n", "", 3)
    assert result.works and "VEX code" in result.detail


def test_complete_run_without_bmi2_works_but_says_so():
    result = interpret_probe("RPL-\n", "", 3)
    assert result.works and "VEX not tested" in result.detail


def test_timeout_reports_the_last_stage():
    result = interpret_probe("RP", "", None, timeout=20)
    assert not result.works
    assert result.detail == "guest did not finish within 20 s; guest reached protected mode"


def test_qemu_failure_reports_its_last_message():
    result = interpret_probe("", "qemu: warning: x\nqemu: failed to initialize kvm\n", 1)
    assert not result.works
    assert "status 1: qemu: failed to initialize kvm" in result.detail
    assert "no output" in result.detail


def test_exit_status_3_without_markers_is_not_success():
    assert not interpret_probe("", "", 3).works


# --- real probe boots --------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_QEMU, reason="needs qemu-system-x86_64")
def test_probe_runs_to_the_end_under_tcg_with_vex():
    result = probe.probe_accelerator("tcg", cpu="max", timeout=20)
    assert result == ProbeResult(True, result.detail, result.seconds)
    assert "VEX code" in result.detail
    assert result.seconds < 5


@pytest.mark.skipif(not HAVE_QEMU, reason="needs qemu-system-x86_64")
def test_probe_runs_to_the_end_under_tcg_default_cpu():
    result = probe.probe_accelerator("tcg", timeout=20)
    assert result.works, result.detail


@pytest.mark.skipif(
    not (HAVE_QEMU and "kvm_pvm" in gather_host_facts().kvm_modules
         and gather_host_facts().kvm_device_usable),
    reason="only meaningful on a kvm_pvm host",
)  # fmt: skip
def test_probe_detects_the_broken_paravirtual_kvm():
    started = time.monotonic()
    result = accel.probe_kvm(timeout=20)
    assert not result.works
    assert "KVM internal error" in result.detail
    assert time.monotonic() - started < 5


def test_probe_kills_a_hanging_qemu(tmp_path):
    pidfile = tmp_path / "pid"
    fake = tmp_path / "fake-qemu"
    fake.write_text(f"#!/bin/sh\nprintf RP\necho $$ > {pidfile}\nexec sleep 60\n")
    fake.chmod(0o755)
    started = time.monotonic()
    result = probe.probe_accelerator("kvm", qemu=str(fake), timeout=1)
    assert time.monotonic() - started < 3
    assert not result.works
    assert result.detail == "guest did not finish within 1 s; guest reached protected mode"
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def test_probe_reports_a_missing_qemu():
    result = probe.probe_accelerator("kvm", qemu="/nonexistent/qemu")
    assert not result.works and "cannot run /nonexistent/qemu" in result.detail


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
