"""Image validation bookkeeping: junit parsing, the pytest command, marking failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkiln.config.profile import load_profile
from hubkiln.errors import BuildError
from hubkiln.stages import artifacts
from hubkiln.validation import imagetest
from hubkiln.validation.engines import FAILED_MARKER, parse_junit, read_reports, record_validation
from hubkiln.validation.imagetest import pytest_command, validation_memory_mib
from hubkiln.validation.material import render_ssh_config, validation_launch_document

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.image.test_services" name="test_active[jupyterhub]"/>
<testcase classname="tests.image.test_services" name="test_active[caddy]">
  <failure message="inactive">journalctl says...</failure></testcase>
<testcase classname="tests.image.test_tls" name="test_login"><skipped message="off"/></testcase>
<testcase classname="tests.image.test_x" name="test_y"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_and_names_failures():
    summary = parse_junit(JUNIT)
    assert (summary.passed, summary.failed, summary.skipped, summary.errors) == (1, 1, 1, 1)
    assert summary.failures == ("tests.image.test_services::test_active[caddy]: inactive",
                                "tests.image.test_x::test_y: boom")
    assert not summary.ok


def test_a_run_without_tests_is_not_a_pass():
    assert not parse_junit('<testsuite name="pytest" tests="0"></testsuite>').ok


def test_pytest_targets_the_forwarded_guest(tmp_path):
    cmd = pytest_command(tmp_path / "j.xml", 2222, Path("/k"), Path("/c"))
    assert "--hosts=ssh://teacher-admin@127.0.0.1:2222" in cmd
    assert "--ssh-identity-file=/k" in cmd and "--ssh-config=/c" in cmd


def test_launch_document_names_one_admin_two_students_and_a_hostile_target():
    doc = validation_launch_document("ssh-ed25519 AAAA k")
    assert doc["admins"] == ["teacher"]
    assert doc["users"] == ["student1", "student2", "student3"]
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]


def test_failed_validation_is_recorded_and_marked(tmp_path):
    artifacts.write_json(tmp_path / "manifest.json", {"validation": {"status": "not-run"}})
    record = {"status": "failed", "failures": ["t::a"], "log": "logs/validate.log"}
    record_validation(tmp_path, record)
    assert artifacts.read_manifest(tmp_path)["validation"]["status"] == "failed"
    assert "t::a" in (tmp_path / FAILED_MARKER).read_text()
    record_validation(tmp_path, {**record, "status": "passed", "failures": []})
    assert not (tmp_path / FAILED_MARKER).exists()


def test_failure_without_a_message_names_its_kind():
    summary = parse_junit('<testsuite><testcase classname="c" name="n"><error/></testcase>'
                          '</testsuite>')
    assert summary.failures == ("c::n: error",)


def test_reports_are_collected_and_a_bad_one_is_named(tmp_path):
    (tmp_path / "lynis.json").write_text('{"hardening_index": 84}')
    (tmp_path / "broken.json").write_text("{not json")
    reports = read_reports(tmp_path)
    assert reports["lynis"] == {"hardening_index": 84}
    assert "unreadable report" in reports["broken"]["error"]


def test_validation_guest_has_room_beyond_one_students_memory_limit():
    assert validation_memory_mib(load_profile("ci")) == 2048 + 1536


def test_ssh_config_shares_one_connection_and_trusts_no_host_key(tmp_path):
    config = render_ssh_config(tmp_path / "control")
    options = dict(line.strip().split(" ", 1) for line in config.splitlines()[1:])
    # testinfra passes ControlMaster=auto itself; the path is what turns sharing on.
    assert options["ControlPath"] == f"{tmp_path}/control/%C"
    assert options["StrictHostKeyChecking"] == "no"
    assert options["UserKnownHostsFile"] == "/dev/null"
    assert int(options["ConnectTimeout"]) > 0 and int(options["ServerAliveInterval"]) > 0


def fake_runs(monkeypatch, accelerator: str, *outcomes: dict) -> list[dict]:
    """Make validate_image see `outcomes`, one per boot, under `accelerator`."""
    from hubkiln.machine import accel
    from hubkiln.validation import imagetest

    runs = list(outcomes)
    booted: list[dict] = []
    monkeypatch.setattr(accel, "choose_accelerator",
                        lambda name=None: accel.AccelChoice(accelerator, "test"))

    def once(*args, **kwargs):
        booted.append(runs[len(booted)])
        return dict(booted[-1])

    monkeypatch.setattr(imagetest, "validate_once", once)
    return booted


PASSED = {"status": "passed", "failed": 0, "failures": []}
PANICKED = {"status": "failed", "failed": 3, "failures": ["t1"], "guest_panic": "int3; panic"}


def test_a_guest_panic_under_tcg_boots_the_image_again(monkeypatch):
    from hubkiln.validation.imagetest import validate_image

    booted = fake_runs(monkeypatch, "tcg", PANICKED, PASSED)
    record = validate_image(load_profile("ci"), Path("/i.qcow2"), engine="vm")
    assert len(booted) == 2
    assert record["status"] == "passed" and record["guest_panics"] == ["int3; panic"]


def test_a_second_panic_or_one_under_kvm_fails_validation(monkeypatch):
    from hubkiln.validation.engines import failure_message
    from hubkiln.validation.imagetest import validate_image

    for accelerator, outcomes in (("tcg", (PANICKED, PANICKED)), ("kvm", (PANICKED,))):
        booted = fake_runs(monkeypatch, accelerator, *outcomes)
        record = validate_image(load_profile("ci"), Path("/i.qcow2"), engine="vm")
        assert len(booted) == len(outcomes)
        assert record["status"] == "failed"
        assert record["failures"][0] == "[vm] guest kernel panic: int3; panic"
        assert "guest kernel panic" in failure_message(record)


def test_engines_auto_is_the_vm_under_kvm_and_both_under_emulation():
    from hubkiln.validation.engines import plan_engines

    assert plan_engines("auto", "kvm") == [("vm", None)]
    assert plan_engines("auto", "tcg") == [("container", "not needs"), ("vm", "needs")]
    assert plan_engines("vm", "tcg") == [("vm", None)]
    assert plan_engines("container", "kvm") == [("container", "not needs")]
    with pytest.raises(BuildError, match="unknown test engine"):
        plan_engines("docker", "tcg")


def test_the_record_says_which_engine_proved_what(monkeypatch):
    from hubkiln.machine import accel

    monkeypatch.setattr(accel, "choose_accelerator",
                        lambda name=None: accel.AccelChoice("tcg", "test"))
    seen = []

    def container(profile, image, progress, args, timeout, logs, variant=None):
        seen.append(("container", args))
        return {"status": "passed", "passed": 40, "failed": 0, "skipped": 2, "failures": [],
                "seconds": 100.0, "reports": {"a": 1}, "log": "logs/validate-container.log"}

    def vm(profile, image, accelerator, progress, args, timeout, logs):
        seen.append(("vm", args))
        return {"status": "failed", "passed": 9, "failed": 1, "skipped": 0,
                "failures": ["t::fw: dropped"], "seconds": 900.0, "reports": {"lynis": 2},
                "log": "logs/validate.log", "accelerator": "tcg", "guest_panics": []}

    monkeypatch.setattr(imagetest, "validate_in_container", container)
    monkeypatch.setattr(imagetest, "validate_in_vm", vm)
    record = imagetest.validate_image(load_profile("ci"), Path("/i.qcow2"),
                                      pytest_args=["-k", "x"])
    assert seen == [("container", ["-m", "not needs", "-k", "x"]),
                    ("vm", ["-m", "needs", "-k", "x"])]
    assert record["status"] == "failed"
    assert (record["passed"], record["failed"], record["skipped"]) == (49, 1, 2)
    assert record["failures"] == ["[vm] t::fw: dropped"]
    assert set(record["engines"]) == {"container", "vm"} and record["accelerator"] == "tcg"
    assert record["reports"] == {"a": 1, "lynis": 2}
    only = imagetest.combine_records({"container": container(None, None, None, [], 0, None)})
    assert only["status"] == "passed" and "need the VM engine" in only["not_run"]


def test_a_settings_variant_boots_in_the_container_only(monkeypatch):
    from hubkiln.machine import accel
    from hubkiln.validation import variants

    # Under KVM `auto` means the VM alone: a variant still boots in the container.
    monkeypatch.setattr(accel, "choose_accelerator",
                        lambda name=None: accel.AccelChoice("kvm", "test"))
    given = []
    monkeypatch.setattr(imagetest, "validate_in_container", lambda *a: given.append(a) or {
        "status": "passed", "passed": 30, "failed": 0, "skipped": 5, "seconds": 50.0,
        "failures": [], "reports": {}, "log": "logs/validate-container.log"})

    def vm(*args):
        raise AssertionError("a variant booted the VM, which has the image's own settings")

    monkeypatch.setattr(imagetest, "validate_in_vm", vm)
    variant = variants.Variant(load_profile("ci"), {"/etc/x": "y"})
    record = imagetest.validate_image(load_profile("ci"), Path("/i.qcow2"), variant=variant)
    assert given[0][-1] is variant and given[0][3] == ["-m", "not needs"]
    assert record["status"] == "passed" and record["engines"]["vm"]["status"] == "not-run"
    assert "a settings variant boots in the container only" in record["not_run"]
    asked = imagetest.validate_image(load_profile("ci"), Path("/i.qcow2"), variant=variant,
                                     engine="container")
    assert asked["engines"]["vm"]["status"] == "not-run" and asked["status"] == "passed"


def test_a_failed_container_run_boots_no_vm(monkeypatch):
    from hubkiln.machine import accel
    from hubkiln.validation import imagetest

    monkeypatch.setattr(accel, "choose_accelerator",
                        lambda name=None: accel.AccelChoice("tcg", "test"))
    monkeypatch.setattr(imagetest, "validate_in_container", lambda *a: {
        "status": "failed", "passed": 3, "failed": 1, "skipped": 0, "seconds": 9.0,
        "failures": ["t::login: 403"], "reports": {}, "log": "logs/validate-container.log"})

    def vm(*args):
        raise AssertionError("the VM was booted after the container's run failed")

    monkeypatch.setattr(imagetest, "validate_in_vm", vm)
    record = imagetest.validate_image(load_profile("ci"), Path("/i.qcow2"))
    assert record["status"] == "failed" and record["engines"]["vm"]["status"] == "not-run"
    assert record["failures"] == ["[container] t::login: 403"]
    assert record["log"] == "logs/validate-container.log"
    assert "the container's run failed first" in record["not_run"]


def test_combined_record_keeps_the_vms_boot_measurement():
    boot = {"to_ssh_seconds": 80.0, "to_login_page_seconds": 95.5}
    runs = {"container": {"status": "passed", "passed": 3},
            "vm": {"status": "passed", "passed": 2, "boot": boot, "accelerator": "tcg"}}
    assert imagetest.combine_records(runs)["boot"] == boot


def test_only_the_faults_and_the_reboot_wait_for_hubkiln_test_faults():
    """The Lynis audit is not a fault test: a validation without the faults audits too."""
    from types import SimpleNamespace

    from hubkiln.config.guest import load_module

    project = Path(__file__).resolve().parents[2]
    conftest = load_module("hubkiln_image_conftest", project / "tests/image/conftest.py")

    def item(file: str, mark: str | None = None):
        return SimpleNamespace(fspath=f"/x/tests/image/{file}",
                               get_closest_marker=lambda name: name == mark or None)

    orders = {name: conftest.run_order(item(*args)) for name, args in {
        "plain": ("test_units.py",), "fault": ("test_faults.py", "disruptive"),
        "lynis": ("test_lynis.py",), "reboot": ("test_reboot.py", "reboot")}.items()}
    assert [name for name, order in orders.items() if order in conftest.OPT_IN] == [
        "fault", "reboot"]
    assert sorted(orders, key=orders.get) == ["plain", "fault", "lynis", "reboot"]
