"""The container engine's pure parts: where the root file system is, the command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln.errors import BuildError
from hubkiln.machine.container import (
    netns_command,
    nspawn_command,
    overlay_path,
    root_partition_offset,
)

SGDISK = """Disk /tmp/disk.raw: 16777216 sectors, 8.0 GiB
Sector size (logical/physical): 512/512 bytes
Partition table holds up to 128 entries

Number  Start (sector)    End (sector)  Size       Code  Name
   1            2048            4095   1024.0 KiB  EF02  bios
   2            4096          413695   200.0 MiB   EF00  esp
   3          413696        16777182   7.8 GiB     8300  root
"""


def test_the_root_file_system_is_the_largest_partition():
    assert root_partition_offset(SGDISK) == 413696 * 512


def test_a_disk_without_partitions_is_refused():
    with pytest.raises(BuildError, match="no GPT partition table"):
        root_partition_offset("Disk x: 0 sectors\n")


def test_the_container_boots_with_a_private_network_and_no_machined():
    command = nspawn_command(Path("/w/tree"), "hubkiln-test")
    assert command[0] == "systemd-nspawn" and command[-2:] == ["-D", "/w/tree"]
    for option in ("--private-network", "--boot", "--register=no", "--keep-unit",
                   "--machine=hubkiln-test"):
        assert option in command


def test_tests_run_in_the_containers_network_namespace_only():
    assert netns_command(4242, ["pytest", "-q"]) == ["nsenter", "-t", "4242", "-n", "--",
                                                     "pytest", "-q"]


def test_a_variants_file_lands_inside_the_tree_only():
    tree = Path("/work/tree")
    assert overlay_path(tree, "/etc/hubkiln/hub.d/00-profile.yaml") == (
        tree / "etc/hubkiln/hub.d/00-profile.yaml")
    for bad in ("etc/hubkiln/x.yaml", "/etc/../../outside", "/../x"):
        with pytest.raises(BuildError, match="not an absolute path inside the image"):
            overlay_path(tree, bad)
