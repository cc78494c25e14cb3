"""What a build leaves in `output/<profile>/`: image, checksums, manifest; and how it gets there.

The inventory (every apt, pip and npm package with its version) is read from
the provisioned tree's own files, without running anything inside it. A build
writes its outputs into a candidate folder beside the current one and
validates them there; only a validated candidate (or one built with
validation explicitly skipped, marked `not-run`) replaces `output/<profile>/`,
by renames. A candidate that failed validation becomes `<profile>.failed/`;
an interrupted build leaves `<profile>.candidate/`, which nothing reads as an
image and the next build removes. Limits: the swap is two renames, so a
crash between them leaves the current folder aside as `<profile>.previous/`
for a moment; the next build puts it back (see `start_candidate`).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubkiln import paths
from hubkiln.config.profile import Profile

MANIFEST = "manifest.json"
#: Beside the manifest: what the image is, how it was proven, how many students it served.
README = "README.md"
SUMS = "SHA256SUMS"
#: Validation outcomes under which a candidate replaces the current folder.
BECOMES_CURRENT = ("passed", "not-run")


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


# --- the current folder, and the candidate that replaces it ---------------


@dataclass(frozen=True)
class Folders:
    """The folders that one profile's builds use, side by side in `output/`.

    `current` is the only one that launch, validate and publish read; the others are
    named after it, so no profile (lower-case letters, digits, dashes) can clash."""

    current: Path
    candidate: Path
    failed: Path
    aside: Path

    @classmethod
    def of(cls, current: Path) -> Folders:
        def beside(suffix: str) -> Path:
            return current.with_name(current.name + suffix)

        return cls(current=current, candidate=beside(".candidate"),
                   failed=beside(".failed"), aside=beside(".previous"))


def destination(folders: Folders, manifest: dict[str, Any] | None) -> Path:
    """Where a finished candidate goes, by the validation status in its manifest (pure):
    `current` when it passed or validation was skipped (`not-run`), else `failed`."""
    status = ((manifest or {}).get("validation") or {}).get("status")
    return folders.current if status in BECOMES_CURRENT else folders.failed


def start_candidate(folders: Folders) -> None:
    """Make an empty candidate folder, after undoing what an interrupted build left.

    A current folder caught aside in the middle of a swap goes back (it was the last
    current image; the candidate had not yet taken its place), or is removed when the
    swap had finished. A stale candidate is removed."""
    if folders.aside.exists():
        if folders.current.exists():
            shutil.rmtree(folders.aside)
        else:
            os.replace(folders.aside, folders.current)
    if folders.candidate.exists():
        shutil.rmtree(folders.candidate)
    folders.candidate.mkdir(parents=True)


def settle(folders: Folders) -> Path:
    """Move the finished candidate where `destination` says; return that folder.

    Any failed folder goes first: a newer image supersedes it, or a newer failure
    replaces it. A passed candidate then renames the current folder aside and the candidate
    into its place, and removes the old one; a failure leaves the current folder alone."""
    dest = destination(folders, read_manifest(folders.candidate))
    if folders.failed.exists():
        shutil.rmtree(folders.failed)
    if dest == folders.current and folders.current.exists():
        os.replace(folders.current, folders.aside)
    os.replace(folders.candidate, dest)
    if folders.aside.exists():
        shutil.rmtree(folders.aside)
    return dest


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


def render_readme(manifest: dict[str, Any]) -> str:
    """The output folder's README.md, from its manifest alone (pure)."""
    source = manifest.get("source") or {}
    commit = source.get("commit", "")[:12] or "an unknown revision"
    dirty = " (with local changes)" if source.get("dirty") else ""
    osinfo = manifest.get("os", {})
    system = osinfo.get("pretty_name") or osinfo.get("id", "?")
    name = manifest.get("profile", "?")
    lines = [f"# {name}: {manifest.get('description', '')}".rstrip(), "",
             f"Built {manifest.get('built_at', '?')} by hubkiln "
             f"{manifest.get('hubkiln_version', '?')} from {commit}{dirty}; {system}, "
             f"kernel {osinfo.get('kernel', '?')}.", "", "## Files", ""]
    for item in manifest.get("files", []):
        lines.append(f"- `{item['name']}` ({item['format']}, {item['bytes'] / 1e6:.0f} MB): "
                     f"sha256 `{item['sha256']}`")
    lines += ["", f"Check them with `sha256sum -c {SUMS}`.", "", "## Validation", ""]
    validation = manifest.get("validation") or {}
    if validation.get("status") in (None, "not-run"):
        lines.append("Not validated: built with --skip-validation. Run `invoke test "
                     f"--profile={name}` before using it.")
    else:
        engines = ", ".join(f"{engine} {run.get('passed', 0)} passed"
                            for engine, run in validation.get("engines", {}).items()
                            if run.get("status") != "not-run")
        lines.append(f"**{validation['status']}** ({validation.get('at', '?')}): "
                     f"{validation.get('passed', 0)} passed, {validation.get('failed', 0)} "
                     f"failed, {validation.get('skipped', 0)} skipped"
                     + (f" ({engines})" if engines else "") + ".")
        boot = validation.get("boot") or {}
        if boot.get("to_login_page_seconds") is not None:
            lines.append(f"Boot under {validation.get('accelerator', '?')}: SSH after "
                         f"{boot['to_ssh_seconds']} s, the login page after "
                         f"{boot['to_login_page_seconds']} s from power-on.")
        if validation.get("not_run"):
            lines.append(f"Not run: {validation['not_run']}.")
    lines += ["", "## Class capacity", ""]
    measured = [manifest[key] for key in ("capacity", "capacity_prestart") if manifest.get(key)]
    for capacity in measured:
        lines.append(f"- {capacity['sizing']} (measured {capacity['at']}; {capacity['file']}).")
    if not measured:
        lines.append("Not measured: `invoke build --loadtest N` or `invoke loadtest "
                     f"--profile={name} --students N` measures it.")
    lines += ["", "## Launch", "",
              "Write launch settings (docs/launch.md), then `invoke seed --config launch.yaml "
              "--output seed.iso` and boot the image with that seed, or `invoke launch "
              f"--profile={name}` to try it locally.", ""]
    return "\n".join(lines)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """manifest.json, and the README.md rendered from it, into an output folder."""
    write_json(folder / MANIFEST, manifest)
    tmp = folder / (README + ".tmp")
    tmp.write_text(render_readme(manifest), encoding="utf-8")
    os.replace(tmp, folder / README)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class BuildPaths:
    """Where one build of one profile reads and writes; `out` is its candidate folder."""

    out: Path
    logs: Path
    work: Path
    cache: Path

    @classmethod
    def for_profile(cls, profile: Profile) -> BuildPaths:
        out = Folders.of(paths.output_dir(profile)).candidate
        return cls(out=out, logs=out / "logs", work=paths.CACHE_DIR / "work" / profile.name,
                   cache=paths.CACHE_DIR / "rootfs")
