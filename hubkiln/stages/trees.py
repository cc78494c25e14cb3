"""Copy and remove root filesystem trees (owners, modes, hard links and xattrs kept).

Trees hold device nodes, setuid files and other users' files: they are copied with
`cp -a` (logged like every command of a build), and removed only once nothing is
mounted below them (a chroot's /proc, /dev or /sys left by an interrupted build).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hubkiln.proc import run
from hubkiln.stages import chroot


def remove_tree(path: Path, log: Path) -> None:
    """Delete a root filesystem tree, after making sure nothing is mounted below it."""
    if path.exists():
        chroot.unmount_stale(path, log)
        shutil.rmtree(path)


def copy_tree(src: Path, dest: Path, log: Path) -> None:
    """Copy a root filesystem, keeping owners, modes, links and xattrs."""
    remove_tree(dest, log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(src), str(dest)], log=log)
