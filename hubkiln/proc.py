"""Child processes: the one supervisor of every external command of a build.

Every program hubkiln starts (mmdebstrap, chroot scripts, mkfs, qemu-img, Packer,
qemu, systemd-nspawn) is a `Child`: it runs in its own process group, its output
is streamed line by line to a stage log (and to the terminal with `--verbose`), and
when the build is interrupted (Ctrl-C, or SIGTERM inside `terminated_by_sigterm`)
or fails, the whole group is stopped: the given signals in turn, each with a grace
period, then SIGKILL, then whatever the group still holds (an orphaned qemu, a
dpkg). Only then does cleanup run, so that it never deletes a tree that a child is
still writing. `run` is the common case: run a command to its end, fail with the
command and the last lines of its output.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hubkiln.errors import BuildError

#: When true, `run` copies every output line to stderr as well as the log.
VERBOSE = os.environ.get("HUBKILN_VERBOSE", "") not in ("", "0")

#: How a command is stopped by default: SIGTERM, 10 s to exit, then SIGKILL.
TERMINATE = ((signal.SIGTERM, 10.0),)


def format_command(cmd: Sequence[str | os.PathLike]) -> str:
    """Return `cmd` as a shell-quoted string, for banners and error messages."""
    return shlex.join(str(c) for c in cmd)


def group_members(pgid: int, *, exclude: int | None = None) -> list[tuple[int, str]]:
    """Live (non-zombie) processes in process group `pgid`, as (pid, command name)."""
    members: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process exited while we looked: not a member any more
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append((int(entry.name), name))
    return members


class Child:
    """A program in its own process group, supervised until it and its group are gone.

    `output` is where its stdout (and, unless `stderr` names a file, its stderr) goes:
    "pipe" (read with `pump`, line by line, into `on_line`) or an open file. Use as a
    context manager: on leaving with an exception (Ctrl-C included), a child still
    running is stopped with `stop_signals`; on any exit, the group is emptied."""

    def __init__(self, argv: Sequence[str | os.PathLike], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, input: bytes | None = None,
                 output: str | IO = "pipe", on_line: Callable[[str], None] | None = None,
                 stderr: IO | None = None, name: str | None = None,
                 stop_signals: Sequence[tuple[signal.Signals, float]] = TERMINATE,
                 note: Callable[[str], None] | None = None) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.on_line = on_line
        self.stop_signals = tuple(stop_signals)
        self.note = note or (lambda message: None)
        self._partial = b""
        self._eof = output != "pipe"
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if output == "pipe" else output,
            stderr=subprocess.STDOUT if stderr is None else stderr,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        self.pid = self.pgid = self.popen.pid
        if input is not None:
            assert self.popen.stdin is not None
            try:
                self.popen.stdin.write(input)
            finally:
                self.popen.stdin.close()
        self.fd = self.popen.stdout.fileno() if self.popen.stdout else -1

    def __enter__(self) -> Child:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self.exited():
            self.stop()
        self.reap()

    # -- output ----------------------------------------------------------------
    def _line(self, raw: bytes) -> None:
        if self.on_line is not None:
            self.on_line(raw.decode("utf-8", "replace"))

    def _feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._line(raw + b"\n")

    def _flush_partial(self) -> None:
        """The last line, when the program's output did not end with a newline."""
        if self._partial:
            raw, self._partial = self._partial, b""
            self._line(raw)

    def _drain_now(self) -> None:
        """Read what is in the pipe now, without waiting for a straggler to close it."""
        if not self._eof:
            os.set_blocking(self.fd, False)
            try:
                while data := os.read(self.fd, 65536):
                    self._feed(data)
                self._eof = True
            except BlockingIOError:
                pass  # the pipe is still open (a straggler holds it) but empty: we have it all
        self._flush_partial()

    # -- state -------------------------------------------------------------------
    def exited(self) -> bool:
        """True once the child has exited. It is not reaped, so its pid (the group's id)
        cannot be reused while its group is still being emptied."""
        if self.popen.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self.pid, flags) is not None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def pump(self, deadline: float | None = None) -> bool:
        """Stream output until the child exits (True) or `deadline` passes (False)."""
        next_check = 0.0
        with selectors.DefaultSelector() as sel:
            if not self._eof:
                sel.register(self.fd, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if not self._eof and sel.select(0.2):
                    data = os.read(self.fd, 65536)
                    if data:
                        self._feed(data)
                    else:
                        self._eof = True
                        sel.unregister(self.fd)
                        self._flush_partial()
                    if now < next_check:
                        continue  # output is flowing: check for exit only every 0.2 s
                elif self._eof:
                    time.sleep(0.05)
                next_check = now + 0.2
                if self.exited():
                    self._drain_now()
                    return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (streaming output) until the child exits; False when `timeout` passed."""
        return self.pump(None if timeout is None else time.monotonic() + timeout)

    # -- stopping ----------------------------------------------------------------
    def signal_group(self, sig: signal.Signals) -> None:
        # ProcessLookupError: every process of the group is already gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def stop(self, signals: Sequence[tuple[signal.Signals, float]] | None = None) -> None:
        """Send each signal to the group in turn, waiting its grace for the child to exit;
        then SIGKILL. A second Ctrl-C while waiting goes straight to SIGKILL."""
        try:
            waited = None
            for sig, grace in (self.stop_signals if signals is None else signals):
                if self.exited():
                    return
                self.note(f"stopping {self.name}: {sig.name} to process group {self.pgid}"
                          if waited is None else
                          f"{self.name} still running after {waited:g} s: {sig.name}")
                self.signal_group(sig)
                if self.pump(time.monotonic() + grace):
                    return
                waited = grace
        except KeyboardInterrupt:
            self.note("interrupted again: SIGKILL")
        self.signal_group(signal.SIGKILL)
        self.pump(time.monotonic() + 10)

    def end(self) -> None:
        """Stop the child if it still runs (its `stop_signals`, then SIGKILL), then reap."""
        try:
            if not self.exited():
                self.stop()
        finally:
            self.reap()

    def reap(self, grace: float = 5.0) -> None:
        """Stop what is left of the group after the child exited (an orphaned qemu, a
        daemon a script started), then reap the child and close its pipe."""
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                left = group_members(self.pgid, exclude=self.pid)
                if not left:
                    break
                names = ", ".join(f"{name} (pid {pid})" for pid, name in left)
                self.note(f"sending {sig.name} to processes left by {self.name}: {names}")
                self.signal_group(sig)
                end = time.monotonic() + grace
                while group_members(self.pgid, exclude=self.pid) and time.monotonic() < end:
                    time.sleep(0.05)
        finally:
            if not self.exited():
                self.signal_group(signal.SIGKILL)
            self.popen.wait()
            if self.popen.stdout:
                self.popen.stdout.close()


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    hint: str | None = None,
    tail: int = 30,
) -> str:
    """Run `cmd` to its end, append its output to `log`, and return the output as text.

    `env` entries are added to the current environment. On a non-zero exit, raise
    BuildError naming the command, its status and its last `tail` lines. Interrupted
    (Ctrl-C, SIGTERM in `terminated_by_sigterm`), the command's whole process group is
    stopped before the exception goes on."""
    argv = [os.fspath(c) for c in cmd]
    last: deque[str] = deque(maxlen=tail)
    lines: list[str] = []
    logf = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115

    def on_line(line: str) -> None:
        lines.append(line)
        last.append(line)
        if logf:
            logf.write(line)
        if VERBOSE:
            sys.stderr.write(line)

    def note(message: str) -> None:
        if logf:
            logf.write(f"hubkiln: {message}\n")
            logf.flush()

    try:
        if logf:
            logf.write(f"$ {format_command(argv)}\n")
            logf.flush()
        with Child(argv, env=env, cwd=cwd, input=input, on_line=on_line, note=note) as child:
            child.wait()
        status = child.returncode
    finally:
        if logf:
            logf.close()
    if status != 0:
        where = f" (full log: {log})" if log else ""
        raise BuildError(
            f"command failed with status {status}{where}: {format_command(argv)}\n"
            + "".join(last).rstrip(),
            hint=hint,
        )
    return "".join(lines)


@contextmanager
def terminated_by_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while in the block, so that a build stopped by
    a service manager or `kill` cleans up (children, mounts, temporary folders) exactly
    as after Ctrl-C. Outside the main thread, signals cannot be handled: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
