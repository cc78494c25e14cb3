"""Rendering Packer templates: pure context, strict templates, valid and formatted HCL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from hubkiln.config import guest
from hubkiln.config.profile import load_profile
from hubkiln.stages import render
from hubkiln.stages.provision import hub_settings
from hubkiln.stages.render import (
    BUILD_USER,
    make_environment,
    qemu_args,
    render_context,
    render_templates,
    shutdown_command,
)

FIXTURES = Path(__file__).parent / "fixtures"
PROFILES = ["ci", "optimization", str(FIXTURES / "maximal.yaml")]
needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")


def test_context_carries_the_profile(tmp_path):
    context = render_context(load_profile("optimization"), tmp_path)
    assert context["profile_name"] == "optimization"
    assert context["disk_size_mib"] == 8192
    env = dict(item.split("=", 1) for item in context["provision_env"])
    assert env["HUBKILN_PYTHON_PACKAGES"].split("\n")[:2] == ["numpy", "scipy"]
    assert env["HUBKILN_KERNEL_DISPLAY_NAME"] == "Python 3 (Optimization)"
    assert context["vm_commands"][-1].endswith("/90-seal.sh")
    assert context["cloud_builders"] == []


def test_cloud_builders_run_every_script_and_qemu_only_the_light_ones(tmp_path):
    context = render_context(load_profile(FIXTURES / "maximal.yaml"), tmp_path)
    assert len(context["cloud_commands"]) > len(context["vm_commands"])
    assert context["cloud_commands"][0].endswith("/10-apt-packages.sh")
    assert not any("10-apt-packages" in c for c in context["vm_commands"])


def test_ssh_forward_is_bound_to_localhost():
    netdev = dict(qemu_args())["-netdev"]
    assert "hostfwd=tcp:127.0.0.1:" in netdev


def test_shutdown_removes_the_build_user_before_powering_off():
    command = shutdown_command()
    assert command.index(f"userdel --force --remove {BUILD_USER}") < command.index("poweroff")


def test_undefined_values_fail_the_render(tmp_path):
    (tmp_path / "x.pkr.hcl.j2").write_text("a = {{ missing | hcl }}\n")
    with pytest.raises(jinja2.UndefinedError):
        make_environment(tmp_path).get_template("x.pkr.hcl.j2").render({})


@pytest.mark.parametrize("ref", PROFILES)
def test_render_writes_only_hcl_into_output(tmp_path, ref):
    profile = load_profile(ref)
    folder = render_templates(profile, tmp_path / "out")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["build.pkr.hcl", "hub-settings.yaml", "sources.pkr.hcl",
                     "variables.pkr.hcl"]
    # The hub settings drop-in is the profile's, as the image checks it.
    settings = yaml.safe_load((folder / "hub-settings.yaml").read_text())
    assert settings == hub_settings(profile)
    assert guest.settings().dropin_problems(folder / "hub-settings.yaml") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["packer"]
    for path in folder.glob("*.hcl"):
        assert "{%" not in path.read_text() and "{#" not in path.read_text()


def test_cloud_sources_render_only_when_selected(tmp_path):
    plain = render_templates(load_profile("ci"), tmp_path / "a") / "sources.pkr.hcl"
    cloud = render_templates(load_profile(FIXTURES / "maximal.yaml"), tmp_path / "b")
    assert 'source "amazon-ebs"' not in plain.read_text()
    text = (cloud / "sources.pkr.hcl").read_text()
    for builder in ("amazon-ebs", "googlecompute", "azure-arm"):
        assert f'source "{builder}" "hubkiln"' in text


@needs_packer
@pytest.mark.parametrize("ref", PROFILES)
def test_rendered_templates_pass_packer_validate(tmp_path, ref):
    profile = load_profile(ref)
    folder = render_templates(profile, tmp_path / "out")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = [f"-var={k}={v}" for k, v in render.template_check_vars(scratch, profile).items()]
    result = subprocess.run(["packer", "validate", *args, "."], cwd=folder,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_packer
@pytest.mark.parametrize("ref", PROFILES)
def test_rendered_templates_are_packer_fmt_clean(tmp_path, ref):
    folder = render_templates(load_profile(ref), tmp_path / "out")
    result = subprocess.run(["packer", "fmt", "-check", "-diff", "."], cwd=folder,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_vm_first_waits_for_cloud_init_then_makes_the_upload_folder():
    from hubkiln.stages.provision import GUEST_PROVISION_DIR
    from hubkiln.stages.render import prepare_commands

    wait, mkdir, chown = prepare_commands()
    assert wait.startswith("sudo -n cloud-init status --wait") and "[ $? -eq 2 ]" in wait
    assert mkdir == f"sudo -n mkdir -p {GUEST_PROVISION_DIR}"
    assert chown.endswith(GUEST_PROVISION_DIR) and "$(id -u)" in chown


@pytest.mark.parametrize(("mib", "gib"), [(8192, 8), (8193, 9), (1, 1), (12 * 1024, 12)])
def test_cloud_volumes_round_the_disk_up_to_whole_gib(mib, gib):
    from hubkiln.stages.render import disk_size_gib

    assert disk_size_gib(mib) == gib


def test_cloud_builders_upload_the_hub_settings_and_the_material(tmp_path):
    from hubkiln.stages.provision import CONTENT_STAGING, HUB_SETTINGS_STAGING
    from hubkiln.stages.render import cloud_staging_commands

    settings_dir = HUB_SETTINGS_STAGING.rsplit("/", 1)[0]
    assert cloud_staging_commands(False) == [f"mkdir -p {settings_dir}"]
    assert cloud_staging_commands(True) == [f"mkdir -p {settings_dir} {CONTENT_STAGING}"]
    folder = render_templates(load_profile(FIXTURES / "maximal.yaml"), tmp_path / "out")
    build = (folder / "build.pkr.hcl").read_text()
    assert f'source      = "{folder / "hub-settings.yaml"}"' in build
    assert f'destination = "{HUB_SETTINGS_STAGING}"' in build
