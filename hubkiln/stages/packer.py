"""Drive Packer: build its command lines, stream its machine-readable output, stop it cleanly.

Written against Debian 12's Packer 1.6.6, whose qemu builder is built in (no
`packer init`, no plugins). Facts checked against that version:

- `packer build DIR` and `packer validate DIR` load every `*.pkr.hcl` in DIR;
  `-var-file` accepts both `*.pkrvars.hcl` and JSON; a later `-var` wins.
- `-only` takes `<type>.<name>` (`qemu.hubkiln`). The `source.qemu.hubkiln`
  spelling, or any unknown name, silently builds NOTHING and exits 0, so
  `build_command` strips a `source.` prefix and `run_packer_build` fails a
  build that reports no artifact.
- `packer validate` has no `-color` flag (it is an error there).
- `-machine-readable` lines are `timestamp,target,type,data...`; inside data a
  comma is `%!(PACKER_COMMA)` and newlines are the two characters `\\n`.
- On SIGINT Packer cancels and cleans up, but children that ignore SIGINT
  (e.g. a provisioner's background job) outlive it, and Packer leaves its
  `packer-shell*` scripts (and the qemu builder's `packer_to_cdrom*` dirs) in
  $TMPDIR. So each build runs in its own process group and its own TMPDIR;
  both are cleaned up whatever happens.
- Packer puts its plugin sockets in $TMPDIR: if that path is longer than
  about 83 characters the plugins cannot start and Packer panics, so the
  per-build TMPDIR is checked against `MAX_TMPDIR_LENGTH`.

Limits: newer Packer (1.10+) no longer bundles the qemu builder and needs the
qemu plugin installed; this module does not install plugins. Packer's data
escaping is lossy: a literal backslash-n in a message reads back as a newline.
Process-group cleanup reads /proc, so `run_packer_build` is Linux-only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hubkiln.errors import BuildError, PreflightError
from hubkiln.proc import Child, format_command

ON_ERROR_CHOICES = ("cleanup", "abort", "run-cleanup-provisioner")

#: Environment every Packer run gets: no update check against the network.
PACKER_BASE_ENV = {"CHECKPOINT_DISABLE": "1"}

#: Packer creates unix sockets `$TMPDIR/packer-plugin<10 digits>`; a socket path
#: must fit in 107 bytes, or plugins fail to start and Packer 1.6.6 panics.
MAX_TMPDIR_LENGTH = 80

_VERSION_RE = re.compile(r"^Packer v(\d+)\.(\d+)\.(\d+)", re.MULTILINE)
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_COMMA = "%!(PACKER_COMMA)"

VarValue = str | int | float | bool


@dataclass(frozen=True)
class MachineEvent:
    """One `-machine-readable` line: `timestamp,target,type,data...`, data unescaped."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def ui_level(self) -> str | None:
        """'say', 'message' or 'error' for `ui` events, else None."""
        return self.data[0] if self.type == "ui" and self.data else None

    @property
    def text(self) -> str:
        """The human text: a `ui` event's message, else the data joined by commas."""
        if self.type == "ui":
            return self.data[1] if len(self.data) > 1 else ""
        return ",".join(self.data)


def parse_packer_version(output: str) -> tuple[int, int, int]:
    """Parse `packer version` output ("Packer v1.6.6", maybe more lines) to (1, 6, 6)."""
    match = _VERSION_RE.search(output)
    if not match:
        raise ValueError(f"not a 'packer version' output: {output.strip()[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def packer_version(packer: str = "packer") -> tuple[int, int, int]:
    """Run `packer version` and return its version; PreflightError if it cannot."""
    argv = [packer, "version"]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**os.environ, **PACKER_BASE_ENV},
            timeout=60,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PreflightError(
            f"Packer is not installed ({packer} not found)", hint="sudo apt-get install packer"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PreflightError(f"{format_command(argv)} did not answer within 60 s") from exc
    try:
        return parse_packer_version(done.stdout)
    except ValueError as exc:
        raise PreflightError(
            f"cannot read Packer's version from {format_command(argv)} "
            f"(status {done.returncode}): {(done.stdout + done.stderr).strip()[:300]}"
        ) from exc


def _var_args(
    var_files: Iterable[str | os.PathLike], vars: Mapping[str, VarValue] | None
) -> list[str]:
    """`-var-file=F` for each file, then `-var k=v` for each variable (later wins)."""
    args = [f"-var-file={os.fspath(f)}" for f in var_files]
    for name, value in (vars or {}).items():
        if not _VAR_NAME_RE.match(name):
            raise ValueError(f"invalid Packer variable name: {name!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise TypeError(f"Packer variable {name!r}: pass lists and maps in a var file")
        args += ["-var", f"{name}={text}"]
    return args


def normalise_only(only: str | Sequence[str]) -> str:
    """Return the `-only` value: comma-joined `<type>.<name>`, `source.` prefix stripped."""
    names = [only] if isinstance(only, str) else list(only)
    cleaned = [n.strip().removeprefix("source.") for n in names if n.strip()]
    if not cleaned:
        raise ValueError("only= needs at least one build name such as 'qemu.hubkiln'")
    for name in cleaned:
        if "." not in name:
            raise ValueError(f"-only name {name!r} must look like '<type>.<name>' (qemu.hubkiln)")
    return ",".join(cleaned)


def validate_command(
    template_dir: str | os.PathLike,
    *,
    var_files: Iterable[str | os.PathLike] = (),
    vars: Mapping[str, VarValue] | None = None,
    packer: str = "packer",
) -> list[str]:
    """Build `packer validate` for a directory of *.pkr.hcl (human-readable output)."""
    return [packer, "validate", *_var_args(var_files, vars), os.fspath(template_dir)]


def build_command(
    template_dir: str | os.PathLike,
    *,
    var_files: Iterable[str | os.PathLike] = (),
    vars: Mapping[str, VarValue] | None = None,
    only: str | Sequence[str] | None = None,
    on_error: str = "cleanup",
    force: bool = False,
    packer: str = "packer",
) -> list[str]:
    """Build `packer build -machine-readable -color=false ...` for a template directory.

    `on_error` is cleanup, abort (keep the VM and output for inspection) or
    run-cleanup-provisioner; `ask` is refused because the build has no terminal.
    `force` deletes an existing output directory first.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, not {on_error!r}")
    argv = [packer, "build", "-machine-readable", "-color=false", f"-on-error={on_error}"]
    if force:
        argv.append("-force")
    if only is not None:
        argv.append(f"-only={normalise_only(only)}")
    return [*argv, *_var_args(var_files, vars), os.fspath(template_dir)]


def _unescape(field: str) -> str:
    return field.replace(_COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_machine_line(line: str) -> MachineEvent | None:
    """Parse one `-machine-readable` line; None for anything else (plain text, blanks)."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) < 3 or not fields[0].isdigit() or not fields[2]:
        return None
    return MachineEvent(
        timestamp=int(fields[0]),
        target=fields[1],
        type=fields[2],
        data=tuple(_unescape(f) for f in fields[3:]),
    )


_UI_MARKER_RE = re.compile(r"^(?:==>|-->)\s*")
_BUILD_PREFIX_RE = re.compile(r"^[\w-]+\.[\w-]+: ")


def describe_event(event: MachineEvent) -> str | None:
    """One line for a progress display: a `ui` event's first line, Packer's markers and
    `<type>.<name>: ` prefix removed, errors prefixed with "error: "; None otherwise."""
    if event.ui_level is None:
        return None
    lines = [line.strip() for line in event.text.splitlines() if line.strip()]
    if not lines:
        return None
    text = _BUILD_PREFIX_RE.sub("", _UI_MARKER_RE.sub("", lines[0]))
    if not text:
        return None
    return f"error: {text}" if event.ui_level == "error" else text


class _BuildRecord:
    """What a build said that matters once it is over: errors, artifacts, plain lines."""

    def __init__(self) -> None:
        self.ui_errors: deque[str] = deque(maxlen=8)
        self.build_errors: list[str] = []
        self.artifacts = 0
        self.plain_lines: deque[str] = deque(maxlen=15)

    def add(self, line: str, event: MachineEvent | None) -> None:
        if event is None:
            if line.strip():
                self.plain_lines.append(line.rstrip())
        elif event.ui_level == "error" and event.text.strip():
            self.ui_errors.append(event.text.strip())
        elif event.type == "error":
            self.build_errors.append(f"{event.target}: {event.text.strip()}")
        elif event.type == "artifact-count":
            self.artifacts += 1

    def failure_summary(self) -> str:
        parts: list[str] = []
        if self.build_errors:
            parts.append("errors:\n" + "\n".join(f"  {e}" for e in self.build_errors))
        if self.ui_errors:
            lines = "\n".join(
                f"  {line}".rstrip() for m in self.ui_errors for line in m.rstrip().splitlines()
            )
            parts.append("last Packer error messages:\n" + lines)
        if self.plain_lines and not parts:
            parts.append("last output:\n" + "\n".join(f"  {p}" for p in self.plain_lines))
        return "\n".join(parts) or "Packer printed no error message"


def run_packer_build(
    argv: Sequence[str | os.PathLike],
    *,
    log: Path,
    on_event: Callable[[MachineEvent], None] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    expect_artifact: bool = True,
    interrupt_grace: float = 60.0,
    term_grace: float = 10.0,
    tmp_parent: Path | None = None,
) -> None:
    """Run a `packer build -machine-readable` command, streaming its events to `on_event`.

    Every output line is appended to `log` as it arrives. Packer runs in its
    own process group with a private TMPDIR (removed afterwards). On an
    exception or KeyboardInterrupt the group gets SIGINT (Packer cleans up),
    then SIGTERM after `interrupt_grace` s and SIGKILL after `term_grace` s,
    and the exception is re-raised. Processes left in the group after Packer
    exits are killed. Raises BuildError on a non-zero exit, with Packer's
    error messages, or when `expect_artifact` and Packer built nothing.
    """
    cmd = [os.fspath(a) for a in argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix="hubkiln-packer-", dir=tmp_parent))
    if len(str(tmpdir)) > MAX_TMPDIR_LENGTH:
        shutil.rmtree(tmpdir)
        raise BuildError(
            f"temporary directory path too long for Packer ({len(str(tmpdir))} > "
            f"{MAX_TMPDIR_LENGTH} characters): {tmpdir}",
            hint="Packer puts its plugin sockets there and crashes when the path exceeds the "
            "unix socket limit; use a shorter tmp_parent or TMPDIR (the default /tmp is fine)",
        )
    full_env = {**PACKER_BASE_ENV, **(env or {}), "TMPDIR": str(tmpdir)}
    record = _BuildRecord()
    try:
        with open(log, "a", encoding="utf-8") as logf:
            logf.write(f"$ {format_command(cmd)}\n")
            logf.flush()
            delivering = [True]

            def on_line(line: str) -> None:
                logf.write(line if line.endswith("\n") else line + "\n")
                logf.flush()
                event = parse_machine_line(line)
                record.add(line, event)
                if delivering[0] and event is not None and on_event is not None:
                    on_event(event)

            def note(message: str) -> None:
                delivering[0] = False  # stopping: Packer's last words go to the log only
                logf.write(f"hubkiln: {message}\n")
                logf.flush()

            try:
                packer = Child(cmd, env=full_env, cwd=cwd, on_line=on_line, note=note,
                               name="Packer",
                               stop_signals=((signal.SIGINT, interrupt_grace),
                                             (signal.SIGTERM, term_grace)))
            except FileNotFoundError as exc:
                raise PreflightError(
                    f"cannot run {cmd[0]}: {exc.strerror}", hint="sudo apt-get install packer"
                ) from exc
            with packer:
                packer.wait()
    finally:
        # Best effort: a temp dir we cannot remove must not hide the build's own outcome.
        shutil.rmtree(tmpdir, ignore_errors=True)
    status = packer.returncode
    if status != 0:
        raise BuildError(
            f"Packer failed with status {status} (full log: {log}): {format_command(cmd)}\n"
            + record.failure_summary(),
            hint=f"read {log}; with on_error='abort' Packer keeps the VM and its output "
            "directory so you can inspect the failure",
        )
    if expect_artifact and record.artifacts == 0:
        raise BuildError(
            f"Packer exited successfully but built nothing (full log: {log}): "
            f"{format_command(cmd)}",
            hint="check -only: Packer 1.6.6 silently skips unknown build names; "
            "use '<type>.<name>' such as 'qemu.hubkiln'",
        )
