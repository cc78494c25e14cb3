"""Run provisioning scripts inside a bootstrapped root filesystem, at native speed.

`chroot_session` mounts what package scripts and installers expect (/proc,
/sys, /dev, /dev/pts, /dev/shm, a tmpfs /run with the host's DNS settings),
installs a policy-rc.d so that no service starts in the tree, and copies a
build-only CA bundle into /run/hubkiln-build/. On exit, even after an
exception, Ctrl-C or SIGTERM, it unmounts everything in reverse order (lazily
as a last resort), removes what it added and fails if a mount is left.

`run_script` copies a script (and an optional support directory) to
/run/hubkiln-build/ and runs it with a clean environment: only the declared
variables, the build-trust variables derived from the CA bundle, and proxies.

Limits, honestly:
- Needs root on a Linux host; the tree must contain bash and /usr/bin/env.
- A chroot is not a container: scripts share the host kernel, network and
  process table. systemd is not running: `systemctl enable` works, `start`
  does nothing (systemctl notices the chroot) and invoke-rc.d is refused.
- Variables passed to a script appear on its command line and so in the
  stage log: do not pass secrets this way.
- /run is a tmpfs, so nothing written there (the CA bundle, the scripts)
  reaches the image. Everything else a script writes stays in the tree.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from hubkiln.errors import BuildError, PreflightError
from hubkiln.proc import run, terminated_by_sigterm

#: Where scripts, support files and the CA bundle live inside the tree (tmpfs).
BUILD_DIR = "/run/hubkiln-build"
CA_IN_ROOT = f"{BUILD_DIR}/ca.pem"

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV: dict[str, str] = {
    "PATH": PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
#: Variables that make common tools trust the build CA bundle.
#: uv honours SSL_CERT_FILE (checked: uv 0.13 behind a TLS-intercepting proxy).
TRUST_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
RESERVED = frozenset(BASE_ENV) | frozenset(TRUST_VARS) | frozenset(PROXY_VARS)

POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_RC_D_TEXT = "#!/bin/sh\n# hubkiln build: no service may start in the chroot\nexit 101\n"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class ChrootSession:
    """A prepared tree: what `chroot_session` yields."""

    root: Path
    #: Path of the build CA bundle inside the tree, or None.
    ca_path: str | None = None
    #: Proxy for plain-HTTP traffic (apt, via an apt cache), or None.
    http_proxy: str | None = None
    #: Proxy for HTTPS traffic (pip, uv, npm, git), or None.
    https_proxy: str | None = None


# ---------------------------------------------------------------- pure helpers


def script_environment(
    env: Mapping[str, str],
    *,
    ca_path: str | None = None,
    http_proxy: str | None = None,
    https_proxy: str | None = None,
) -> dict[str, str]:
    """Return the full environment of a script: base, trust and proxy vars, then `env`.

    Raise BuildError on an invalid name or on a name hubkiln sets itself.
    """
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise BuildError(f"invalid environment variable name {name!r}")
        if name in RESERVED:
            raise BuildError(
                f"environment variable {name} is set by hubkiln itself",
                hint="rename the variable (proxies and CA bundles are build options)",
            )
        if "\0" in value:
            raise BuildError(f"environment variable {name} contains a NUL byte")
    result = dict(BASE_ENV)
    if ca_path:
        result.update(dict.fromkeys(TRUST_VARS, ca_path))
    if http_proxy:
        result["http_proxy"] = result["HTTP_PROXY"] = http_proxy
    if https_proxy:
        result["https_proxy"] = result["HTTPS_PROXY"] = https_proxy
    result.update(env)
    return result


def chroot_command(root: Path, script_in_root: str, environment: Mapping[str, str]) -> list[str]:
    """Return the argv that runs `script_in_root` with bash in `root`, with exactly
    `environment` (see `script_environment`)."""
    assigns = [f"{k}={v}" for k, v in environment.items()]
    return ["chroot", str(root), "/usr/bin/env", "-i", *assigns, "bash", script_in_root]


def mounts_under(root: Path, mountinfo: str) -> list[str]:
    """Return the mount points at or below `root` listed in `mountinfo`
    (the text of /proc/self/mountinfo), in mount order."""
    prefix = str(root).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # mountinfo escapes space, tab, newline and backslash as octal
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def mount_plan(root: Path) -> list[tuple[list[str], str]]:
    """Return (mount argv, mount point) pairs that prepare `root`, in order.
    Bind mounts are made private so that nothing mounted below them propagates
    back to the host's /dev."""
    r = str(root)
    return [
        (["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc"], f"{r}/proc"),
        (["mount", "-t", "sysfs", "-o", "nosuid,nodev,noexec", "sysfs", f"{r}/sys"], f"{r}/sys"),
        (["mount", "--bind", "--make-private", "/dev", f"{r}/dev"], f"{r}/dev"),
        (["mount", "--bind", "--make-private", "/dev/pts", f"{r}/dev/pts"], f"{r}/dev/pts"),
        (["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "shm", f"{r}/dev/shm"],
         f"{r}/dev/shm"),
        (["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=755", "run", f"{r}/run"], f"{r}/run"),
    ]


# ------------------------------------------------------------ side effects


def _read_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def check_no_mounts_under(root: Path) -> None:
    """Raise BuildError if anything is mounted at or below `root`."""
    left = mounts_under(root.resolve(), _read_mountinfo())
    if left:
        raise BuildError(
            f"still mounted below {root}: {', '.join(left)}",
            hint=f"unmount them (umount -R {root}) before deleting or imaging the tree",
        )


def _unmount_all(points: list[str], log: Path) -> None:
    """Unmount `points`, given in mount order, last first; fall back to a lazy unmount."""
    for point in reversed(points):
        try:
            run(["umount", point], log=log)
        except BuildError:
            # busy (a process left running inside): detach it now, the
            # kernel frees it when the last user goes
            with suppress(BuildError):
                run(["umount", "--lazy", point], log=log)


def unmount_stale(root: Path, log: Path) -> None:
    """Unmount whatever an earlier, killed build left mounted below `root`."""
    stale = mounts_under(root.resolve(), _read_mountinfo())
    if stale:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"hubkiln: unmounting stale mounts: {' '.join(stale)}\n")
        _unmount_all(stale, log)
        check_no_mounts_under(root)


def _install_resolv_conf(root: Path, log: Path) -> None:
    """Make DNS work in the tree: write the host's resolv.conf where the tree's
    /etc/resolv.conf link points into /run, or bind-mount it over a plain file."""
    host = Path("/etc/resolv.conf").read_bytes()
    conf = root / "etc/resolv.conf"
    if conf.is_symlink():
        target = os.readlink(conf)
        absolute = os.path.normpath(os.path.join("/etc", target))
        if not absolute.startswith("/run/"):
            raise BuildError(
                f"{conf} links to {target}, outside /run",
                hint="only a resolv.conf that is a file or a link into /run is supported",
            )
        dest = root / absolute.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(host)
        return
    if not conf.exists():
        conf.touch()
    run(["mount", "--bind", "/etc/resolv.conf", str(conf)], log=log)


def _stop_processes_in(root: Path, log: Path) -> None:
    """Kill processes still running inside the tree (daemons a script left behind,
    such as gpg-agent), so that the tree can be unmounted."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with suppress(OSError):
            if os.readlink(proc / "root") == str(root):
                pids.append(int(proc.name))
    if not pids:
        return
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"hubkiln: killing processes left in the chroot: {pids}\n")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)


@contextmanager
def chroot_session(
    root: Path,
    *,
    ca_bundle: Path | None,
    log: Path,
    proxy: str | None = None,
    https_proxy: str | None = None,
) -> Iterator[ChrootSession]:
    """Prepare `root` for running scripts and undo it all on exit. See the module doc.

    `proxy` becomes http_proxy (plain-HTTP traffic, e.g. apt through an apt
    cache) and `https_proxy` https_proxy for every script of the session.
    """
    if os.geteuid() != 0:
        raise PreflightError("running scripts in a chroot needs root", hint="run as root")
    root = root.resolve()
    if not (root / "usr/bin/env").exists():
        raise BuildError(f"{root} does not look like a root filesystem (no /usr/bin/env)")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise BuildError(f"CA bundle {ca_bundle} not found")
    unmount_stale(root, log)

    policy = root / POLICY_RC_D
    policy_backup = policy.with_name("policy-rc.d.hubkiln-saved")
    touched_resolv = False
    with terminated_by_sigterm():
        try:
            if policy.exists():
                policy.rename(policy_backup)
            policy.write_text(POLICY_RC_D_TEXT)
            policy.chmod(0o755)
            for argv, point in mount_plan(root):
                Path(point).mkdir(parents=True, exist_ok=True)
                run(argv, log=log)
            resolv_conf = root / "etc/resolv.conf"
            touched_resolv = not resolv_conf.exists() and not resolv_conf.is_symlink()
            _install_resolv_conf(root, log)
            build_dir = root / BUILD_DIR.lstrip("/")
            build_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            ca_path = None
            if ca_bundle is not None:
                shutil.copyfile(ca_bundle, root / CA_IN_ROOT.lstrip("/"))
                ca_path = CA_IN_ROOT
            yield ChrootSession(
                root=root, ca_path=ca_path, http_proxy=proxy, https_proxy=https_proxy
            )
        finally:
            _stop_processes_in(root, log)
            # everything below root is ours (stale mounts were removed first),
            # including a mount whose `mount` was interrupted and mounts that
            # a script made itself
            _unmount_all(mounts_under(root, _read_mountinfo()), log)
            if touched_resolv:
                with suppress(FileNotFoundError):
                    (root / "etc/resolv.conf").unlink()
            with suppress(FileNotFoundError):
                policy.unlink()
            if policy_backup.exists():
                policy_backup.rename(policy)
            check_no_mounts_under(root)


def script_placement(script: Path, support_dir: Path | None) -> tuple[str, str | None]:
    """Return (script path, support dir path) inside the tree for `run_script`.

    A script inside `support_dir` runs from the copy of that directory, so its
    siblings (lib/, files/) are where it expects them; otherwise the script is
    copied next to the support directory.
    """
    if support_dir is not None:
        support_in_root = f"{BUILD_DIR}/{support_dir.name}"
        try:
            relative = script.resolve().relative_to(support_dir.resolve())
        except ValueError:
            return f"{BUILD_DIR}/{script.name}", support_in_root
        return f"{support_in_root}/{relative.as_posix()}", support_in_root
    return f"{BUILD_DIR}/{script.name}", None


def run_script(
    session_or_root: ChrootSession | Path,
    script: Path,
    env: Mapping[str, str],
    log: Path,
    *,
    support_dir: Path | None = None,
) -> None:
    """Run `script` with bash inside the tree, with only `env` plus the session's trust
    and proxy variables in its environment.

    `support_dir` (e.g. provision/) is copied to /run/hubkiln-build/<its name>/;
    see `script_placement` for where the script goes. Given a bare root path,
    a session without CA bundle or proxies is opened for this one script.
    """
    if not isinstance(session_or_root, ChrootSession):
        with chroot_session(session_or_root, ca_bundle=None, log=log) as session:
            run_script(session, script, env, log, support_dir=support_dir)
        return
    session = session_or_root
    environment = script_environment(
        env,
        ca_path=session.ca_path,
        http_proxy=session.http_proxy,
        https_proxy=session.https_proxy,
    )
    script_in_root, support_in_root = script_placement(script, support_dir)
    if support_dir is not None and support_in_root is not None:
        support_dest = session.root / support_in_root.lstrip("/")
        if support_dest.exists():
            shutil.rmtree(support_dest)
        shutil.copytree(support_dir, support_dest, symlinks=True)
    if support_in_root is None or not script_in_root.startswith(support_in_root + "/"):
        shutil.copyfile(script, session.root / script_in_root.lstrip("/"))
    run(
        chroot_command(session.root, script_in_root, environment),
        log=log,
        hint=f"see the log for the output of {script.name}",
    )
