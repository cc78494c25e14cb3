"""Bootstrap a minimal cloud-VM root filesystem with mmdebstrap.

`OSES` lists the supported operating systems (Ubuntu 24.04 "noble", Debian 12
"bookworm") with the packages a cloud VM needs to boot, get its network and
users from cloud-init, and be reached over SSH. `mmdebstrap_command` builds
the command line (pure); `bootstrap_rootfs` runs it into a directory next to
the target, checks the result and renames it into place.

Limits, honestly:
- Host must be Debian/Ubuntu with mmdebstrap (1.3.5 tested) and we must be
  root: mmdebstrap runs in `--mode=root`. For Ubuntu suites mmdebstrap needs
  distro-info-data (or debootstrap) to know the suite is Ubuntu's.
- Only amd64. No mirror is named: mmdebstrap picks each distribution's
  archive (with -updates and -security) from the suite name. `mirror`
  replaces it; for Debian the security pocket is another archive, so
  `security_mirror` must be given with `mirror`.
- The Ubuntu archive key is shipped in `hubkiln/keyrings/` (see README.md
  there); Debian's comes from the host's debian-archive-keyring package.
- apt in the tree is set to never install Recommends (kept in the image:
  /etc/apt/apt.conf.d/99mmdebstrap). A build proxy is removed from that file
  after the bootstrap; later stages pass proxies as environment variables.
- The tree is not yet bootable: `hubkiln.stages.disk.assemble_disk` adds fstab and
  the boot loader. Host-specific identity (host name, SSH host keys) is
  removed here (mmdebstrap leaves /etc/machine-id empty) and C.UTF-8 is made
  the default locale. Later stages may add identity back: the image
  finaliser must still clean machine-id, SSH host keys, logs and cloud-init.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hubkiln.config.profile import SEPARATE_SECURITY_ARCHIVE
from hubkiln.errors import BuildError, PreflightError
from hubkiln.paths import KEYRING_DIR
from hubkiln.proc import run
from hubkiln.stages.chroot import check_no_mounts_under

UBUNTU_KEYRING = KEYRING_DIR / "ubuntu-archive-2018.gpg"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DISTRO_INFO_DIR = Path("/usr/share/distro-info")
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")

#: Packages every supported OS gets (names common to Debian and Ubuntu).
#: grub-pc-bin/grub-efi-amd64-bin/grub2-common carry only the boot loader
#: files: grub-pc/grub-efi-amd64 would try to install onto a device.
COMMON_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",  # hostnamectl (cloud-init set_hostname) and resolved need the bus
    "systemd-resolved",  # a separate package on both; DNS for netplan/networkd
    "systemd-timesyncd",  # the clock: TLS, ACME, OAuth and LTI tokens need it right
    "netplan.io",  # cloud-init renders network config for netplan -> networkd
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",  # growpart: cloud-init grows the root partition
    "e2fsprogs",
    "iproute2",
    "initramfs-tools",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "ca-certificates",
    "sudo",
    "apt",  # minbase leaves apt out on Ubuntu
    "lsb-release",  # without it cloud-init writes sources for "UNAVAILABLE"
    "qemu-guest-agent",
)

#: Written before any package is installed: the kernel packages then keep
#: /boot/vmlinuz and /boot/initrd.img pointing at the newest kernel (Debian
#: puts these links in / by default; Ubuntu already uses /boot).
KERNEL_IMG_CONF = "do_symlinks = yes\nlink_in_boot = yes\n"

KERNEL_IMG_CONF_HOOK = (
    "--setup-hook=printf 'do_symlinks = yes\\nlink_in_boot = yes\\n'"
    ' > "$1/etc/kernel-img.conf"'
)

MMDEBSTRAP = "mmdebstrap"

#: Documentation that a server image does not need, as in Ubuntu's minimal
#: images (copyright notices stay). mmdebstrap keeps these options in
#: /etc/dpkg/dpkg.cfg.d/, so packages installed later skip them too.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)


@dataclass(frozen=True)
class OsSpec:
    """One supported operating system."""

    os_id: str
    #: The distribution, as mmdebstrap tells them apart: "debian" or "ubuntu".
    vendor: str
    suite: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    keyring: Path
    #: True when the -security pocket lives in the same archive as the rest.
    security_in_main_archive: bool


OSES: dict[str, OsSpec] = {
    "ubuntu-24.04": OsSpec(
        os_id="ubuntu-24.04",
        vendor="ubuntu",
        suite="noble",
        # everything we install is in main; universe stays enabled so that
        # course provisioning can install from it
        components=("main", "universe"),
        packages=("linux-image-virtual", "ubuntu-keyring", *COMMON_PACKAGES),
        keyring=UBUNTU_KEYRING,
        security_in_main_archive="ubuntu-24.04" not in SEPARATE_SECURITY_ARCHIVE,
    ),
    "debian-12": OsSpec(
        os_id="debian-12",
        vendor="debian",
        suite="bookworm",
        components=("main",),
        packages=("linux-image-cloud-amd64", "debian-archive-keyring", *COMMON_PACKAGES),
        keyring=DEBIAN_KEYRING,
        security_in_main_archive="debian-12" not in SEPARATE_SECURITY_ARCHIVE,
    ),
}


def os_spec(os_id: str) -> OsSpec:
    """Return the `OsSpec` for `os_id`, or fail naming the supported ones."""
    try:
        return OSES[os_id]
    except KeyError:
        raise BuildError(
            f"unsupported OS {os_id!r}",
            hint=f"use one of: {', '.join(sorted(OSES))}",
        ) from None


def package_list(os_id: str) -> list[str]:
    """Return the packages `bootstrap_rootfs` installs for `os_id` (for cache keys)."""
    return list(os_spec(os_id).packages)


def sources_lines(
    spec: OsSpec, mirror: str, security_mirror: str | None = None
) -> list[str]:
    """Return one-line apt sources for `mirror`: the suite, -updates and -security."""
    comps = " ".join(spec.components)
    if security_mirror is None:
        if not spec.security_in_main_archive:
            raise BuildError(
                f"{spec.os_id}: a mirror was given but no security mirror",
                hint="the -security pocket of Debian is a separate archive: "
                "set the security mirror too, or use an apt proxy instead of a mirror",
            )
        security_mirror = mirror
    return [
        f"deb {mirror} {spec.suite} {comps}",
        f"deb {mirror} {spec.suite}-updates {comps}",
        f"deb {security_mirror} {spec.suite}-security {comps}",
    ]


def mmdebstrap_command(
    os_id: str,
    target: Path,
    *,
    mirror: str | None = None,
    security_mirror: str | None = None,
    apt_proxy: str | None = None,
    extra_packages: Sequence[str] = (),
    keyring: Path | None = None,
) -> list[str]:
    """Return the mmdebstrap argv that bootstraps `os_id` into directory `target`."""
    spec = os_spec(os_id)
    packages = list(dict.fromkeys([*spec.packages, *extra_packages]))
    cmd = [
        MMDEBSTRAP,
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        f"--components={','.join(spec.components)}",
        f"--keyring={keyring or spec.keyring}",
        '--aptopt=APT::Install-Recommends "false"',
        *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
    ]
    if apt_proxy:
        cmd.append(f'--aptopt=Acquire::http::Proxy "{apt_proxy}"')
    cmd += [
        KERNEL_IMG_CONF_HOOK,
        f"--include={','.join(packages)}",
        spec.suite,
        str(target),
    ]
    if mirror:
        cmd += sources_lines(spec, mirror, security_mirror)
    return cmd


def strip_apt_proxy(aptconf: str) -> str:
    """Return apt.conf text without Acquire::http(s)::Proxy lines (build-only settings)."""
    kept = [
        line
        for line in aptconf.splitlines(keepends=True)
        if not line.lstrip().lower().startswith(("acquire::http::proxy", "acquire::https::proxy"))
    ]
    return "".join(kept)


def resolve_in_root(root: Path, path: str) -> Path:
    """Resolve `path` (absolute, inside the tree `root`) following symlinks as the
    tree sees them, i.e. absolute link targets are taken relative to `root`."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _ in range(64):  # bounded, so that a symlink loop cannot hang us
        if not parts:
            return current
        name = parts.pop(0)
        if name == "..":
            current = current.parent if current != root else root
            continue
        if name == ".":
            continue
        candidate = current / name
        if candidate.is_symlink():
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = root
            continue
        current = candidate
    raise BuildError(f"too many symlinks resolving {path} in {root}")


def check_rootfs(root: Path) -> None:
    """Fail unless `root` holds a kernel and initramfs at /boot/vmlinuz and /boot/initrd.img."""
    for link in ("/boot/vmlinuz", "/boot/initrd.img"):
        real = resolve_in_root(root, link)
        if not real.is_file() or real.stat().st_size == 0:
            raise BuildError(
                f"bootstrapped tree {root} has no usable {link}",
                hint="check the mmdebstrap log: the kernel or initramfs-tools did not install",
            )


def scrub_host_identity(root: Path) -> None:
    """Remove what mmdebstrap and package scripts copied from or generated on the build host:
    the host name, SSH host keys, and a build proxy in apt's configuration."""
    (root / "etc/hostname").write_text("localhost\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    aptconf = root / "etc/apt/apt.conf.d/99mmdebstrap"
    if aptconf.exists():
        aptconf.write_text(strip_apt_proxy(aptconf.read_text()))


def write_default_locale(root: Path) -> None:
    """Make C.UTF-8 the system locale unless the tree sets a LANG. cloud-init's
    `locale: C.UTF-8` then has nothing to do; without /etc/default/locale it
    installs and runs locale-gen on first boot (minutes under TCG)."""
    conf = root / "etc/default/locale"
    text = conf.read_text() if conf.exists() else ""
    if not any(line.startswith("LANG=") for line in text.splitlines()):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text + ("" if text.endswith("\n") or not text else "\n") + "LANG=C.UTF-8\n")


def mmdebstrap_knows_suite(
    spec: OsSpec,
    distro_info_dir: Path = DISTRO_INFO_DIR,
    debootstrap_scripts: Path = DEBOOTSTRAP_SCRIPTS,
) -> bool:
    """Return True if mmdebstrap can tell `spec.suite` is Ubuntu's (and so pick
    Ubuntu's archive). It knows only releases up to 2018 by heart; newer ones
    it reads from distro-info-data or debootstrap. Debian suites are built in."""
    if spec.vendor != "ubuntu":
        return True
    csv = distro_info_dir / "ubuntu.csv"
    if csv.is_file():
        for line in csv.read_text().splitlines():
            cells = line.split(",")
            if len(cells) > 2 and cells[2] == spec.suite:
                return True
    return (debootstrap_scripts / spec.suite).exists()


def check_bootstrap_host(spec: OsSpec) -> None:
    """Fail with PreflightError unless mmdebstrap, root, the keyring and the
    suite's vendor data are available."""
    keyring = spec.keyring
    if shutil.which(MMDEBSTRAP) is None:
        raise PreflightError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    if os.geteuid() != 0:
        raise PreflightError(
            "bootstrapping a root filesystem needs root", hint="run the build as root"
        )
    if not keyring.is_file():
        hint = (
            "apt-get install debian-archive-keyring"
            if keyring == DEBIAN_KEYRING
            else "reinstall hubkiln: its keyrings/ directory is missing"
        )
        raise PreflightError(f"archive keyring {keyring} not found", hint=hint)
    if not mmdebstrap_knows_suite(spec):
        raise PreflightError(
            f"mmdebstrap cannot tell that {spec.suite!r} is an Ubuntu release",
            hint="apt-get install distro-info-data (a newer one if it is installed)",
        )


def bootstrap_rootfs(
    os_id: str,
    target: Path,
    *,
    mirror: str | None = None,
    security_mirror: str | None = None,
    apt_proxy: str | None = None,
    extra_packages: Sequence[str] = (),
    log: Path,
) -> None:
    """Bootstrap `os_id` into the directory `target` (which must not exist).

    The tree is built in a hidden temporary directory next to `target` and
    renamed into place only once it passed `check_rootfs`, so an interrupted
    bootstrap never leaves something that looks complete.
    """
    spec = os_spec(os_id)
    check_bootstrap_host(spec)
    if target.exists() or target.is_symlink():
        raise BuildError(
            f"{target} already exists",
            hint="remove it to bootstrap again, or reuse it",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        run(
            mmdebstrap_command(
                os_id,
                tmp,
                mirror=mirror,
                security_mirror=security_mirror,
                apt_proxy=apt_proxy,
                extra_packages=extra_packages,
            ),
            log=log,
            hint="check network access to the package archive (or set an apt proxy/mirror)",
        )
        check_rootfs(tmp)
        scrub_host_identity(tmp)
        write_default_locale(tmp)
        tmp.rename(target)
    except BaseException:
        # never rmtree through a mount point: that would delete host files
        check_no_mounts_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
