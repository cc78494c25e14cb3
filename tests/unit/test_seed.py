"""NoCloud seeds: build user only, C.UTF-8 locale, key from a fresh keypair."""

from __future__ import annotations

import shutil

import pytest
import yaml

from hubkiln.machine.nocloud import (
    build_user_data,
    make_seed_iso,
    make_ssh_key,
    render_meta_data,
    render_user_data,
    seed_iso_command,
    write_seed_dir,
)


def test_user_data_is_cloud_config_with_one_key_only_account():
    text = render_user_data(build_user_data("hubkiln-build", "ssh-ed25519 AAAA test\n"))
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    (user,) = data["users"]
    assert user["name"] == "hubkiln-build"
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA test"]
    assert user["lock_passwd"] is True
    assert data["ssh_pwauth"] is False
    assert data["locale"] == "C.UTF-8"


def test_meta_data_gets_a_fresh_instance_id_each_time():
    first, second = (yaml.safe_load(render_meta_data("h")) for _ in range(2))
    assert first["local-hostname"] == "h"
    assert first["instance-id"] != second["instance-id"]


def test_seed_iso_command_labels_the_volume_cidata(tmp_path):
    cmd = seed_iso_command(tmp_path, tmp_path / "seed.iso")
    assert cmd[cmd.index("-volid") + 1] == "cidata"
    assert str(tmp_path / "user-data") in cmd and str(tmp_path / "meta-data") in cmd


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_make_ssh_key_replaces_an_old_key(tmp_path):
    first = make_ssh_key(tmp_path / "k", "c")
    second = make_ssh_key(tmp_path / "k", "c")
    assert first.startswith("ssh-ed25519 ") and first != second


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
def test_seed_iso_holds_both_files(tmp_path):
    folder = write_seed_dir(tmp_path / "seed", "#cloud-config\n", "instance-id: x\n")
    iso = make_seed_iso(folder, tmp_path / "seed.iso")
    data = iso.read_bytes()
    assert b"CIDATA" in data.upper() and b"instance-id: x" in data
