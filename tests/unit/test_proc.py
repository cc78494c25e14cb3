"""hubkiln.proc: every child in its own process group, stopped with it, never left behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hubkiln.errors import BuildError
from hubkiln.proc import Child, run, terminated_by_sigterm


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def signal_self_soon(sig: signal.Signals, after: float) -> threading.Timer:
    timer = threading.Timer(after, os.kill, (os.getpid(), sig))
    timer.start()
    return timer


def test_run_returns_the_output_and_logs_the_command(tmp_path):
    log = tmp_path / "stage.log"
    assert run(["sh", "-c", "echo one; echo two >&2; printf three"], log=log) == \
        "one\ntwo\nthree"
    assert log.read_text().startswith("$ sh -c 'echo one; echo two >&2; printf three'\n")


def test_a_failure_names_the_command_its_status_and_last_lines(tmp_path):
    with pytest.raises(BuildError) as failed:
        run(["sh", "-c", "for i in 1 2 3 4; do echo line$i; done; exit 3"], tail=2,
            hint="do this")
    message = str(failed.value)
    assert "status 3" in message and "line3\nline4" in message and "line1" not in message
    assert failed.value.hint == "do this"


def test_ctrl_c_stops_the_command_and_what_it_started(tmp_path, sigint_raises):
    # The shell has started a grandchild, in the same group: both must go.
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; wait"
    timer = signal_self_soon(signal.SIGINT, 0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(["sh", "-c", script])
    timer.cancel()
    shell, sleeper = map(int, wait_for_file(pids).split())
    assert time.monotonic() - started < 10
    assert not alive(shell) and not alive(sleeper)


def test_sigterm_is_an_interruption_inside_the_block(tmp_path):
    pids = tmp_path / "pids"
    timer = signal_self_soon(signal.SIGTERM, 0.5)
    with pytest.raises(KeyboardInterrupt), terminated_by_sigterm():
        run(["sh", "-c", f"echo $$ > {pids}; exec sleep 300"])
    timer.cancel()
    assert not alive(int(wait_for_file(pids)))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_a_child_that_ignores_the_signals_is_killed_after_the_grace(tmp_path):
    pids = tmp_path / "pids"
    notes: list[str] = []
    child = Child(["sh", "-c", f"trap '' INT TERM; echo $$ > {pids}; while :; do sleep 1; done"],
                  stop_signals=((signal.SIGINT, 0.3), (signal.SIGTERM, 0.3)), name="stubborn",
                  note=notes.append)
    pid = int(wait_for_file(pids))
    started = time.monotonic()
    child.end()
    assert time.monotonic() - started < 5
    assert not alive(pid)
    assert notes[0] == f"stopping stubborn: SIGINT to process group {pid}"
    assert notes[1] == "stubborn still running after 0.3 s: SIGTERM"


def test_what_a_finished_child_leaves_in_its_group_is_stopped(tmp_path):
    pids = tmp_path / "pids"
    with open(os.devnull, "w") as devnull, \
            Child(["sh", "-c", f"sleep 300 & echo $! > {pids}"], output=devnull) as child:
        child.wait()
    assert child.returncode == 0
    assert not alive(int(wait_for_file(pids)))


def test_output_without_a_final_newline_is_kept(tmp_path):
    lines: list[str] = []
    with Child(["printf", "a\\nb"], on_line=lines.append) as child:
        child.wait()
    assert lines == ["a\n", "b"]
