"""The build's cache of root filesystems, keyed by what shapes them.

Heavy layers (the bootstrapped OS, then the OS packages and the Python and Node
environments) live under `.cache/rootfs/` in a folder named after a hash of
everything that shapes them: the profile's base, the scripts and files of their
steps, and their environment. A layer is made in a temporary folder beside its
target and renamed into place only when complete, so an interrupted build never
leaves a half-made layer that a later build would take for a hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hubkiln.config.profile import Profile
from hubkiln.paths import PROVISION_DIR
from hubkiln.progress import Progress
from hubkiln.stages import disk, grub, rootfs
from hubkiln.stages.provision import (
    Step,
    script_path,
    step_env,
)
from hubkiln.stages.trees import remove_tree

#: How many trees of each cached layer to keep (other profiles, older inputs).
CACHE_KEEP = 4


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts and file contents."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()
                           and "__pycache__" not in p.parts) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part if part.is_dir() else part.parent)).encode())
                h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def base_key(profile: Profile) -> str:
    """Cache key of the bootstrapped OS."""
    base = profile["base"]
    return digest("base", base["os"], base["apt_mirror"], base["apt_security_mirror"],
                  rootfs.package_list(base["os"]), Path(rootfs.__file__), Path(disk.__file__),
                  Path(grub.__file__))


def layer_key(parent: str, steps: list[Step], env: dict[str, str]) -> str:
    """Cache key of a provisioned layer: its parent, its scripts, their shared files, inputs."""
    files = sorted({name for step in steps for name in step.files})
    return digest(parent, step_env(steps, env), *(script_path(s) for s in steps),
                  PROVISION_DIR / "lib", *(PROVISION_DIR / "files" / name for name in files))


def ensure_cached(key_dir: Path, make, progress: Progress, name: str, what: str,
                  log: Path) -> bool:
    """Make `key_dir` with `make(tmp)` unless it is cached; return True on a cache hit."""
    if key_dir.exists():
        os.utime(key_dir)  # most recently used: kept by prune_cache
        progress.skip(name, f"{what} ({key_dir.name})")
        return True
    key_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in key_dir.parent.glob(f".{key_dir.name}.*"):
        remove_tree(stale, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key_dir.name}.", dir=key_dir.parent))
    try:
        with progress.stage(name, what):
            make(tmp / "root")
        try:
            os.replace(tmp / "root", key_dir)
        except OSError:
            if not key_dir.exists():
                raise
            # A concurrent build made the same layer first: keep theirs, drop ours.
    finally:
        remove_tree(tmp, log)
    return False


def prune_cache(cache: Path, keep: int, log: Path) -> list[Path]:
    """Keep the `keep` most recently used trees of each layer; remove the older ones."""
    removed = []
    for prefix in ("os-", "envs-"):
        trees = sorted(cache.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[keep:]:
            remove_tree(old, log)
            removed.append(old)
    return removed
