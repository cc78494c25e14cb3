"""What a build leaves in `output/<profile>/`: image, checksums, manifest; written atomically.

The inventory (every apt, pip and npm package with its version) is read from
the provisioned tree's own files, without running anything inside it. The
outputs are prepared in a hidden staging folder inside `output/<profile>/`
and moved into place only when complete, `manifest.json` last, so an
interrupted build never leaves a partial artifact where a good one would be.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def image_stem(profile_name: str, version: str, date: str) -> str:
    """`hubkiln-<profile>-<version or date>`: the base name of every image file."""
    return f"hubkiln-{profile_name}-{version or date}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_sums(checksums: dict[str, str]) -> str:
    """SHA256SUMS in the format `sha256sum -c` reads."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(checksums.items()))


# --- inventory ------------------------------------------------------------------


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages (name → version) from a dpkg status file."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, flags=re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def python_packages(venv: Path) -> dict[str, str]:
    """Distributions (name → version) installed in a virtual environment's site-packages."""
    found = {}
    for meta in sorted(venv.glob("lib/python3*/site-packages/*.dist-info/METADATA")):
        headers = email.parser.Parser().parsestr(meta.read_text(encoding="utf-8",
                                                                errors="replace"),
                                                 headersonly=True)
        if headers["Name"]:
            found[headers["Name"]] = headers["Version"] or ""
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def npm_packages(node_modules: Path) -> dict[str, str]:
    """npm packages (name → version) installed below a node_modules folder."""
    found = {}
    for manifest in node_modules.glob("**/package.json"):
        parent = manifest.parent
        if parent.parent.name not in ("node_modules",) and not parent.parent.name.startswith("@"):
            continue
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
        if isinstance(data, dict) and data.get("name") and data.get("version"):
            found[data["name"]] = data["version"]
    return dict(sorted(found.items()))


def inventory(tree: Path, venvs: dict[str, Path], node_modules: Iterable[Path]) -> dict[str, Any]:
    """Every package of a provisioned tree: apt, then each venv's pip packages, then npm."""
    status = tree / "var/lib/dpkg/status"
    apt = parse_dpkg_status(status.read_text(encoding="utf-8")) if status.exists() else {}
    pip = {name: python_packages(tree / path.relative_to("/")) for name, path in venvs.items()}
    npm: dict[str, str] = {}
    for folder in node_modules:
        npm.update(npm_packages(tree / folder.relative_to("/")))
    return {"apt": apt, "pip": pip, "npm": dict(sorted(npm.items()))}


def os_release(tree: Path) -> dict[str, str]:
    """The tree's /etc/os-release as a dict."""
    path = tree / "etc/os-release"
    if not path.exists():
        path = tree / "usr/lib/os-release"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return {k: v.strip('"') for k, v in re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.M)}


def kernel_version(tree: Path) -> str:
    """The kernel that /boot/vmlinuz points at (`6.8.0-48-generic`), or ''."""
    link = tree / "boot/vmlinuz"
    target = os.readlink(link) if link.is_symlink() else ""
    return Path(target).name.removeprefix("vmlinuz-")


# --- publishing ----------------------------------------------------------------


def publish(staging: Path, dest: Path) -> list[Path]:
    """Move every file of `staging` into `dest`, manifest last; drop older images.

    Files of the previous build that the new manifest does not list (an image
    with an older date, say) are removed once the new manifest is in place.
    """
    dest.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(dest)
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    ordered = [n for n in names if n != MANIFEST] + ([MANIFEST] if MANIFEST in names else [])
    for name in ordered:
        os.replace(staging / name, dest / name)
    shutil.rmtree(staging)
    current = read_manifest(dest) or {}
    keep = set(ordered) | {f["name"] for f in current.get("files", [])}
    for old in (previous or {}).get("files", []):
        if old["name"] not in keep:
            (dest / old["name"]).unlink(missing_ok=True)
    return [dest / n for n in ordered]


def source_revision(project: Path) -> dict[str, Any] | None:
    """The hubkiln commit an image was built from, and whether the checkout had changes
    (`dirty`): so that an image can be traced to its code. None outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(project), *args], capture_output=True,
                              text=True, timeout=30)

    try:
        head = git("rev-parse", "--verify", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0 or status.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
