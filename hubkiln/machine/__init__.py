"""Machines that run a built image: qemu VMs and systemd-nspawn containers.

`accel` chooses KVM or TCG (with a `probe` boot when the host's KVM is unknown), `vm`
and `container` boot an image fresh on a throwaway layer, and `nocloud` makes the
NoCloud seeds they boot with. Validation, the load test and `invoke launch` use them.
"""
