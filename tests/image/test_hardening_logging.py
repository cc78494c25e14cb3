"""Logging (HARDENING.md "logging"): a persistent, compressed journal; auditd with rules
for identity, sudoers and modules, suspending (never halting) on a full disk."""

from __future__ import annotations

import pytest

#: Proven in the VM only (auditd needs the image's own kernel): see hubkiln/validation/engines.py.
pytestmark = pytest.mark.needs("audit")

AUDIT_KEYS = ["identity", "scope", "modules", "actions", "sshd"]
AUDITD_CONF = {"disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND",
               "admin_space_left_action": "SUSPEND"}



@pytest.mark.parametrize("setting", ["Storage=persistent", "Compress=yes"])
def test_journald_setting(host, hardening, setting):
    config = host.run("systemd-analyze cat-config systemd/journald.conf").stdout
    values = [line for line in config.splitlines() if line.startswith(setting.split("=")[0] + "=")]
    assert values and values[-1] == setting


def test_journal_is_on_disk(host, hardening):
    assert host.file("/var/log/journal").is_directory
    assert host.run("journalctl --header | grep -q '^File path: /var/log/journal'").rc == 0


def test_auditd_runs(host, hardening, journal):
    service = host.service("auditd")
    assert service.is_enabled and service.is_running, journal("auditd.service")


@pytest.mark.parametrize("key", AUDIT_KEYS)
def test_audit_rules_are_loaded(host, hardening, journal, key):
    with host.sudo():
        rules = host.run("auditctl -l").stdout
    assert f"-k {key}" in rules or f"key={key}" in rules, rules + journal("auditd.service")


@pytest.mark.parametrize("name,value", sorted(AUDITD_CONF.items()))
def test_auditd_never_halts(host, hardening, name, value):
    with host.sudo():
        conf = host.file("/etc/audit/auditd.conf").content_string
    found = [line.split("=", 1)[1].strip() for line in conf.splitlines()
             if line.split("=", 1)[0].strip() == name]
    assert found == [value]


def test_identity_changes_are_audited(host, hardening):
    with host.sudo():
        probe = "hubkiln-audit-probe"
        assert host.run(f"groupadd --system {probe} && groupdel {probe}").rc == 0
        found = host.run("ausearch --input-logs -k identity -ts recent -x groupadd")
    assert found.rc == 0 and "groupadd" in found.stdout, found.stdout + found.stderr
