"""Build outputs: inventory from a tree's files, checksums, provenance (publication:
test_outputs.py)."""

from __future__ import annotations

import json
import subprocess

from hubkiln.stages import artifacts

DPKG_STATUS = """\
Package: bash
Status: install ok installed
Version: 5.2.21-2ubuntu4

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0

Package: apt
Status: install ok installed
Version: 2.7.14build2
"""


def test_dpkg_status_lists_installed_packages_only():
    assert artifacts.parse_dpkg_status(DPKG_STATUS) == {"apt": "2.7.14build2",
                                                       "bash": "5.2.21-2ubuntu4"}


def test_inventory_reads_apt_pip_and_npm_from_the_tree(tmp_path):
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    meta = tmp_path / "opt/hub/lib/python3.12/site-packages/jupyterhub-6.1.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: jupyterhub\nVersion: 6.1.1\n\nx")
    pkg = tmp_path / "opt/proxy/node_modules/@scope/thing"
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": "@scope/thing", "version": "1.2.3"}))
    chp = tmp_path / "opt/proxy/node_modules/configurable-http-proxy"
    chp.mkdir(parents=True)
    (chp / "package.json").write_text(json.dumps({"name": "configurable-http-proxy",
                                                  "version": "5.0.1"}))
    from pathlib import Path
    found = artifacts.inventory(tmp_path, {"hub": Path("/opt/hub")},
                                [Path("/opt/proxy/node_modules")])
    assert found["pip"] == {"hub": {"jupyterhub": "6.1.1"}}
    assert found["npm"] == {"@scope/thing": "1.2.3", "configurable-http-proxy": "5.0.1"}
    assert found["apt"]["bash"] == "5.2.21-2ubuntu4"


def test_sums_are_in_sha256sum_format(tmp_path):
    image = tmp_path / "a.qcow2"
    image.write_bytes(b"abc")
    digest = artifacts.sha256_file(image)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert artifacts.render_sums({"a.qcow2": digest}) == f"{digest}  a.qcow2\n"


def test_image_stem_prefers_the_version():
    assert artifacts.image_stem("ci", "", "20261125") == "hubkiln-ci-20261125"
    assert artifacts.image_stem("ci", "2026-fall", "20261125") == "hubkiln-ci-2026-fall"


def test_source_revision_names_the_commit_and_local_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert artifacts.source_revision(tmp_path) is None  # not a checkout yet
    git("init", "-q")
    (tmp_path / "tasks.py").write_text("one\n")
    git("add", "tasks.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert artifacts.source_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "tasks.py").write_text("two\n")
    assert artifacts.source_revision(tmp_path) == {"commit": head, "dirty": True}
    (tmp_path / "scratch.txt").write_text("untracked files do not count\n")
    (tmp_path / "tasks.py").write_text("one\n")
    assert artifacts.source_revision(tmp_path)["dirty"] is False


def manifest(**changes) -> dict:
    return {"profile": "ci", "description": "Smallest image.", "hubkiln_version": "0.1.0",
            "source": {"commit": "0123456789abcdef", "dirty": True},
            "built_at": "2026-12-01T10:00:00+00:00",
            "os": {"id": "ubuntu-24.04", "pretty_name": "Ubuntu 24.04.3 LTS", "kernel": "6.8"},
            "files": [{"name": "hubkiln-ci.qcow2", "format": "qcow2", "sha256": "ab" * 32,
                       "bytes": 312_000_000}],
            "validation": {"status": "not-run"}, **changes}


def test_the_readme_says_what_the_image_is_and_that_it_is_not_validated():
    text = artifacts.render_readme(manifest())
    assert text.startswith("# ci: Smallest image.\n")
    assert "from 0123456789ab (with local changes); Ubuntu 24.04.3 LTS, kernel 6.8" in text
    assert f"`hubkiln-ci.qcow2` (qcow2, 312 MB): sha256 `{'ab' * 32}`" in text
    assert "Not validated" in text and "Not measured" in text


def test_the_readme_gives_the_validation_boot_and_sizing_line():
    text = artifacts.render_readme(manifest(
        validation={"status": "passed", "at": "t", "passed": 300, "failed": 0, "skipped": 2,
                    "accelerator": "tcg",
                    "engines": {"container": {"status": "passed", "passed": 200},
                                "vm": {"status": "passed", "passed": 100}},
                    "boot": {"to_ssh_seconds": 80.1, "to_login_page_seconds": 88.0}},
        capacity={"sizing": "container on 2 vCPU / 24 GiB: 60 students", "at": "t2",
                  "file": "capacity.json"}))
    assert "**passed** (t): 300 passed, 0 failed, 2 skipped (container 200 passed, " \
           "vm 100 passed)." in text
    assert "Boot under tcg: SSH after 80.1 s, the login page after 88.0 s" in text
    assert "- container on 2 vCPU / 24 GiB: 60 students (measured t2; capacity.json)." in text


def test_the_manifest_and_its_readme_are_written_together(tmp_path):
    artifacts.write_manifest(tmp_path, manifest())
    assert artifacts.read_manifest(tmp_path)["profile"] == "ci"
    assert (tmp_path / "README.md").read_text() == artifacts.render_readme(manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "manifest.json"]
