"""Run host commands: log their output to a stage log, fail with a useful message.

Every external command of a build goes through `run`, so that each stage has
one log file under `output/<profile>/logs/` and a failure shows the command
and the last lines of its output. `--verbose` also streams output live.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from hubkiln.errors import BuildError

#: When true, `run` copies every output line to stderr as well as the log.
VERBOSE = os.environ.get("HUBKILN_VERBOSE", "") not in ("", "0")


def format_command(cmd: Sequence[str | os.PathLike]) -> str:
    """Return `cmd` as a shell-quoted string, for banners and error messages."""
    return shlex.join(str(c) for c in cmd)


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
    """Run `cmd`, append its output to `log`, and return the output as text.

    `env` entries are added to the current environment. On a non-zero exit,
    raise BuildError naming the command, its status and its last `tail` lines.
    """
    argv = [str(c) for c in cmd]
    full_env = {**os.environ, **(env or {})}
    last: deque[str] = deque(maxlen=tail)
    lines: list[str] = []
    logf = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115
    try:
        if logf:
            logf.write(f"$ {format_command(argv)}\n")
            logf.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
        )
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input)
            proc.stdin.close()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            last.append(line)
            if logf:
                logf.write(line)
            if VERBOSE:
                sys.stderr.write(line)
        status = proc.wait()
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
