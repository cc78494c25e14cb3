"""The local VM runner's command lines: snapshot boots, localhost-only forwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln.machine.vm import (
    VmSpec,
    cpu_model,
    find_kernel_panic,
    netdev_arg,
    qemu_command,
    ssh_command,
)


def spec(**kw) -> VmSpec:
    return VmSpec(image=Path("/i.qcow2"), seed_iso=Path("/s.iso"), serial_log=Path("/l"), **kw)


def test_forwards_bind_localhost_only():
    assert netdev_arg({22: 2222, 443: 8443}, restrict=False) == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8443-:443")


def test_restricted_network_has_no_way_out():
    assert netdev_arg({22: 1}, restrict=True).startswith("user,id=net0,restrict=on,")


def test_boot_is_on_a_snapshot_with_the_seed_and_the_chosen_accelerator():
    cmd = qemu_command(spec(accelerator="kvm", forwards={22: 2222}))
    assert cmd[cmd.index("-accel") + 1] == "kvm"
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert drives[0].startswith("file=/i.qcow2,") and drives[0].endswith(",snapshot=on")
    assert drives[1] == "file=/s.iso,if=virtio,format=raw,readonly=on"


def test_the_guest_cpu_has_the_features_numpy_needs():
    """qemu64, the default, lacks SSE4.2/POPCNT: NumPy 2 dies with an invalid opcode."""
    assert cpu_model("kvm") == "host" and cpu_model("tcg") == "Nehalem"
    for accelerator in ("kvm", "tcg"):
        cmd = qemu_command(spec(accelerator=accelerator))
        assert cmd[cmd.index("-cpu") + 1] == cpu_model(accelerator)


def test_uefi_needs_writable_vars():
    with pytest.raises(ValueError):
        qemu_command(spec(firmware="uefi"))
    cmd = qemu_command(spec(firmware="uefi", uefi_vars=Path("/v.fd")))
    assert "if=pflash,format=raw,file=/v.fd" in cmd


def test_ssh_targets_the_forwarded_localhost_port():
    cmd = ssh_command(2222, "u", Path("/k"), "true")
    assert cmd[-2:] == ["u@127.0.0.1", "true"]
    assert cmd[cmd.index("-p") + 1] == "2222"


def test_a_guest_kernel_panic_ends_qemu():
    cmd = qemu_command(spec())
    assert cmd[cmd.index("pvpanic-pci") - 1] == "-device"
    assert cmd[cmd.index("-action") + 1] == "panic=exit-failure"


#: The console of a validation guest that crashed under TCG (session 4), shortened.
PANIC_CONSOLE = """\
[  132.798489] cloud-init[716]: Cloud-init v. 26.2 finished at Thu, 26 Nov 2026 07:29:15 +0000.
[  204.742050] int3: 0000 [#1] PREEMPT SMP PTI
[  204.743325] CPU: 0 PID: 214 Comm: systemd-journal Not tainted 6.8.0-151-generic #151-Ubuntu
[  204.743485] RIP: 0010:check_cfs_rq_runtime+0x6/0x70
[  204.747546] RIP: 0010:check_cfs_rq_runtime+0x6/0x70
[  204.747743] Kernel panic - not syncing: Fatal exception in interrupt
[  206.751537] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---
"""


def test_a_kernel_panic_is_told_in_one_line_with_its_oops():
    assert find_kernel_panic(PANIC_CONSOLE) == (
        "int3: 0000 [#1] PREEMPT SMP PTI; Kernel panic - not syncing: Fatal exception in "
        "interrupt")
    assert find_kernel_panic("[    1.0] Kernel panic - not syncing: VFS: Unable to mount root"
                             ) == "Kernel panic - not syncing: VFS: Unable to mount root"
    assert find_kernel_panic(PANIC_CONSOLE.split("[  204.742050]")[0]) is None
