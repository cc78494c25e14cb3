"""Check, before a build starts, that the host has every tool and file it needs.

A requirement is an executable name (looked up on PATH) or an absolute path
(a firmware file or a GRUB module directory that must exist). Missing items
are reported all at once, with the one `apt-get install` command that
provides them, from `HOST_PACKAGES` (tool -> Debian 12 package, checked with
`dpkg -S` on Debian 12).

Limits: package names are Debian 12's; other distributions name them
differently (the message still lists the missing tools). An executable found
only in an sbin directory that is not on PATH is reported as such, since the
build runs tools by name. Versions are not checked except Packer's minimum.
Packer 1.10+ no longer bundles the qemu builder (it needs
`packer plugins install github.com/hashicorp/qemu`); that is not checked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hubkiln.errors import PreflightError
from hubkiln.stages.packer import packer_version

#: Tool or file -> the Debian 12 package that provides it.
HOST_PACKAGES: dict[str, str] = {
    "packer": "packer",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "sgdisk": "gdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "xorriso": "xorriso",
    "mkfs.ext4": "e2fsprogs",
    "grub-mkimage": "grub-common",
    "/usr/share/OVMF/OVMF_CODE.fd": "ovmf",
    "/usr/lib/grub/i386-pc": "grub-pc-bin",
    "/usr/lib/grub/x86_64-efi": "grub-efi-amd64-bin",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "shellcheck": "shellcheck",
    "chromium": "chromium",  # the validation's browser test (tests/image/test_browser.py)
    "virsh": "libvirt-clients",  # invoke publish --to libvirt
    "libvirtd": "libvirt-daemon-system",
    "systemd-nspawn": "systemd-container",  # the container engine (hubkiln/machine/container.py)
    "caddy": "caddy",  # checks the front's configs (tests/image/test_guest_logic.py)
    "fail2ban-regex": "fail2ban",  # checks the hub jail's filter (test_hardening_rules.py)
}

#: Where Debian puts admin tools (sgdisk, mkfs.*) that a user's PATH may lack.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

#: Oldest Packer this project is tested with (Debian 12's, qemu builder built in).
MINIMUM_PACKER_VERSION = (1, 6, 6)

Which = Callable[..., str | None]


@dataclass(frozen=True)
class HostCheck:
    """Result of checking requirements: what is missing and how to install it."""

    missing: tuple[str, ...] = ()
    not_on_path: tuple[tuple[str, str], ...] = ()  # (tool, where it was found)

    @property
    def packages(self) -> tuple[str, ...]:
        """Debian packages providing the missing items, each once, in first-seen order."""
        return tuple(dict.fromkeys(HOST_PACKAGES[m] for m in self.missing if m in HOST_PACKAGES))

    @property
    def unknown(self) -> tuple[str, ...]:
        """Missing items for which no Debian package is known."""
        return tuple(m for m in self.missing if m not in HOST_PACKAGES)

    @property
    def apt_command(self) -> str | None:
        """The exact command that installs the missing packages, or None."""
        return "sudo apt-get install " + " ".join(self.packages) if self.packages else None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.not_on_path


def check_requirements(
    needs: Iterable[str],
    *,
    which: Which | None = None,
    exists: Callable[[str], bool] = os.path.exists,
) -> HostCheck:
    """Pure (given `which`/`exists`): find which of `needs` are missing or off PATH.

    `which` defaults to `shutil.which`, looked up at call time.
    """
    which = which or shutil.which
    missing: list[str] = []
    off_path: list[tuple[str, str]] = []
    for item in dict.fromkeys(needs):
        if item.startswith("/"):
            if not exists(item):
                missing.append(item)
        elif which(item) is None:
            elsewhere = which(item, path=os.pathsep.join(SBIN_DIRS))
            if elsewhere is None:
                missing.append(item)
            else:
                off_path.append((item, elsewhere))
    return HostCheck(missing=tuple(missing), not_on_path=tuple(off_path))


def describe_problems(result: HostCheck) -> tuple[str, str | None]:
    """Pure: the error message and hint for a failed `HostCheck`."""
    lines: list[str] = []
    if result.missing:
        lines.append(f"{len(result.missing)} host tool(s) or file(s) the build needs are missing:")
        for item in result.missing:
            package = HOST_PACKAGES.get(item)
            where = f"Debian package {package}" if package else "no known Debian package"
            lines.append(f"  - {item} ({where})")
    for tool, found in result.not_on_path:
        lines.append(f"  - {tool} is installed as {found}, but its directory is not on PATH")
    hints: list[str] = []
    if result.apt_command:
        hints.append(f"install with: {result.apt_command}")
    if result.unknown:
        hints.append(f"install {', '.join(result.unknown)} by hand")
    if result.not_on_path:
        dirs = ":".join(sorted({os.path.dirname(f) for _, f in result.not_on_path}))
        hints.append(f'add the directory to PATH (export PATH="$PATH:{dirs}") or run as root')
    return "\n".join(lines), "; ".join(hints) or None


def check_host_tools(needs: Iterable[str]) -> None:
    """Raise PreflightError listing every missing tool of `needs` and how to install it."""
    result = check_requirements(needs)
    if not result.ok:
        message, hint = describe_problems(result)
        raise PreflightError(message, hint=hint)


def packer_version_problem(
    found: tuple[int, int, int], minimum: tuple[int, int, int] = MINIMUM_PACKER_VERSION
) -> str | None:
    """Pure: a message if Packer `found` is older than `minimum`, else None."""
    if found >= minimum:
        return None
    have = ".".join(map(str, found))
    need = ".".join(map(str, minimum))
    return f"Packer {have} is too old: hubkiln needs Packer {need} or newer (HCL2 templates)"


def check_packer_version(
    minimum: tuple[int, int, int] = MINIMUM_PACKER_VERSION, *, packer: str = "packer"
) -> tuple[int, int, int]:
    """Return Packer's version; PreflightError if it is missing or older than `minimum`."""
    found = packer_version(packer)
    problem = packer_version_problem(found, minimum)
    if problem:
        raise PreflightError(
            problem,
            hint="install a newer Packer (Debian 12: sudo apt-get install packer) "
            "and make sure it comes first on PATH",
        )
    return found
