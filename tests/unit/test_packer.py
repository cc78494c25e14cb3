"""Packer driver: argv builders, version and machine-readable parsing, and the runner.

The runner tests run the real Packer (1.6.6 here) on tiny templates that use
the built-in `null` builder and `shell-local` provisioner: no VM, each test
takes well under a few seconds. The fixture
`fixtures/packer-machine-readable.txt` is unedited `packer build
-machine-readable` output of Packer 1.6.6: a successful null build (with
commas and stderr output), a failing one (exit 3) and an invalid template.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hubkiln.errors import BuildError, PreflightError
from hubkiln.stages import packer
from hubkiln.stages.packer import (
    MachineEvent,
    build_command,
    describe_event,
    parse_machine_line,
    parse_packer_version,
    validate_command,
)

FIXTURE = Path(__file__).parent / "fixtures" / "packer-machine-readable.txt"
HAVE_PACKER = shutil.which("packer") is not None
needs_packer = pytest.mark.skipif(not HAVE_PACKER, reason="needs packer on PATH")


# --- version ----------------------------------------------------------------------


def test_parse_packer_1_6_6():
    assert parse_packer_version("Packer v1.6.6\n") == (1, 6, 6)


def test_parse_newer_packer_with_more_lines():
    out = (
        "Packer v1.11.2\n\nYour version of Packer is out of date! The latest version\n"
        "is 1.12.0. You can update by downloading from the website.\n"
    )
    assert parse_packer_version(out) == (1, 11, 2)


def test_parse_dev_build():
    assert parse_packer_version("Packer v1.9.0-dev (abc123)\n") == (1, 9, 0)


@pytest.mark.parametrize("out", ["", "packer 1.6.6", "Terraform v1.6.6"])
def test_parse_rejects_other_output(out):
    with pytest.raises(ValueError):
        parse_packer_version(out)


def test_packer_version_runs_the_binary(tmp_path):
    fake = tmp_path / "packer"
    fake.write_text('#!/bin/sh\n[ "$1" = version ] && [ "$CHECKPOINT_DISABLE" = 1 ] '
                    '&& echo "Packer v1.7.10"\n')  # fmt: skip
    fake.chmod(0o755)
    assert packer.packer_version(str(fake)) == (1, 7, 10)


def test_packer_version_of_a_missing_binary():
    with pytest.raises(PreflightError, match="not installed") as err:
        packer.packer_version("/nonexistent/packer")
    assert "apt-get install packer" in err.value.hint


def test_packer_version_with_unreadable_output(tmp_path):
    fake = tmp_path / "packer"
    fake.write_text("#!/bin/sh\necho nonsense\nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(PreflightError, match="status 2"):
        packer.packer_version(str(fake))


@needs_packer
def test_packer_version_of_the_host_packer():
    assert packer.packer_version() >= (1, 6, 6)


# --- argv builders --------------------------------------------------------------------


def test_validate_command_minimal():
    assert validate_command("packer/out") == ["packer", "validate", "packer/out"]


def test_validate_command_has_no_color_flag_and_passes_vars():
    argv = validate_command(
        Path("t"), var_files=[Path("a.pkrvars.hcl"), "b.json"], vars={"x": "1 2", "y": 3},
        packer="/usr/bin/packer",
    )  # fmt: skip
    assert argv == [
        "/usr/bin/packer", "validate", "-var-file=a.pkrvars.hcl", "-var-file=b.json",
        "-var", "x=1 2", "-var", "y=3", "t",
    ]  # fmt: skip
    assert not any(a.startswith("-color") for a in argv)


def test_build_command_defaults():
    assert build_command("t") == [
        "packer", "build", "-machine-readable", "-color=false", "-on-error=cleanup", "t",
    ]  # fmt: skip


def test_build_command_everything():
    argv = build_command(
        "t", var_files=["v.pkrvars.hcl"], vars={"headless": True, "cpus": 2, "name": "a,b"},
        only=["source.qemu.hubkiln", "null.x"], on_error="abort", force=True,
    )  # fmt: skip
    assert argv == [
        "packer", "build", "-machine-readable", "-color=false", "-on-error=abort", "-force",
        "-only=qemu.hubkiln,null.x", "-var-file=v.pkrvars.hcl",
        "-var", "headless=true", "-var", "cpus=2", "-var", "name=a,b", "t",
    ]  # fmt: skip


def test_only_accepts_a_string_and_strips_source_prefix():
    assert build_command("t", only="source.qemu.hubkiln")[-2] == "-only=qemu.hubkiln"
    assert build_command("t", only="qemu.hubkiln")[-2] == "-only=qemu.hubkiln"


@pytest.mark.parametrize("only", [[], "", "hubkiln", ["qemu.hubkiln", "qemu"]])
def test_only_rejects_names_packer_would_silently_ignore(only):
    with pytest.raises(ValueError):
        build_command("t", only=only)


@pytest.mark.parametrize("on_error", ["ask", "keep", ""])
def test_build_command_rejects_on_error_values(on_error):
    with pytest.raises(ValueError, match="on_error"):
        build_command("t", on_error=on_error)


def test_vars_reject_bad_names_and_structured_values():
    with pytest.raises(ValueError, match="variable name"):
        build_command("t", vars={"a=b": "c"})
    with pytest.raises(TypeError, match="var file"):
        build_command("t", vars={"disks": ["a", "b"]})
    with pytest.raises(TypeError):
        build_command("t", vars={"nothing": None})


# --- machine-readable parsing -------------------------------------------------------------


def fixture_events() -> list[MachineEvent]:
    lines = FIXTURE.read_text().splitlines()
    events = [parse_machine_line(line) for line in lines]
    assert all(events), "every captured line is a machine-readable line"
    return events  # type: ignore[return-value]


def test_fixture_parses_completely():
    events = fixture_events()
    assert {e.type for e in events} == {"ui", "artifact-count", "artifact", "error-count", "error"}
    assert all(e.timestamp > 1_500_000_000 for e in events)


def test_comma_escape_is_undone():
    messages = [e.text for e in fixture_events() if e.ui_level == "message"]
    assert "    null.hubkiln: hello, world" in messages
    assert "    null.hubkiln: a,b,c" in messages


def test_newline_escape_is_undone():
    say = [e.text for e in fixture_events() if e.ui_level == "say"]
    assert "\n==> Builds finished. The artifacts of successful builds are:" in say
    error = [e.text for e in fixture_events() if e.text.startswith("Error: Unsupported")]
    assert error[0].splitlines()[:3] == [
        "Error: Unsupported argument",
        "",
        "  on tplbad/bad.pkr.hcl line 3:",
    ]


def test_artifact_and_error_events_keep_target_and_fields():
    events = fixture_events()
    artifact = next(e for e in events if e.type == "artifact" and e.data[1] == "builder-id")
    assert artifact.target == "null.hubkiln"
    assert artifact.data == ("0", "builder-id", "fnoeding.null")
    error = next(e for e in events if e.type == "error")
    assert error.target == "null.hubkiln"
    assert error.text.startswith("Script exited with non-zero exit status: 3")
    assert error.ui_level is None


def test_parse_exact_line():
    line = "1795635569,,ui,message,    null.hubkiln: a%!(PACKER_COMMA)b\\r\\nc\n"
    assert parse_machine_line(line) == MachineEvent(
        1795635569, "", "ui", ("message", "    null.hubkiln: a,b\r\nc")
    )


@pytest.mark.parametrize(
    "line",
    ["", "\n", "plain text from a plugin", "Error: something, bad, happened",
     "abc,,ui,say,x", "123,,", "12,target"],
)  # fmt: skip
def test_non_machine_lines_are_none(line):
    assert parse_machine_line(line) is None


def test_event_text_and_level():
    ui = MachineEvent(1, "", "ui", ("say",))
    assert ui.ui_level == "say" and ui.text == ""
    other = MachineEvent(1, "t", "artifact", ("0", "id", "Null"))
    assert other.ui_level is None and other.text == "0,id,Null"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (("say", "==> qemu.hubkiln: Waiting for SSH to become available..."),
         "Waiting for SSH to become available..."),
        (("message", "    qemu.hubkiln: Setting up jupyterhub (4.1)"),
         "Setting up jupyterhub (4.1)"),
        (("error", "==> qemu.hubkiln: E: Unable to locate package x"),
         "error: E: Unable to locate package x"),
        (("say", "\n==> Wait completed after 1 second"), "Wait completed after 1 second"),
        (("say", "--> qemu.hubkiln: VM files in directory: out"), "VM files in directory: out"),
        (("error", "Error: Unsupported argument\n\n  on x line 3:"),
         "error: Error: Unsupported argument"),
        (("say", "\n"), None),
        (("say", "==> "), None),
    ],
)  # fmt: skip
def test_describe_ui_events(data, expected):
    assert describe_event(MachineEvent(1, "", "ui", data)) == expected


def test_describe_ignores_non_ui_events():
    assert describe_event(MachineEvent(1, "null.x", "artifact-count", ("1",))) is None


# --- the runner, for real, with the null builder ----------------------------------------------

NULL_TEMPLATE = """\
variable "script" {
  type = list(string)
}

source "null" "hubkiln" {
  communicator = "none"
}

build {
  sources = ["source.null.hubkiln"]

  provisioner "shell-local" {
    inline = var.script
  }
}
"""


def null_build(tmp_path: Path, *script: str, **kwargs) -> list[str]:
    """A template dir in tmp_path running `script` lines; return its build argv.

    Run it with cwd=tmp_path: if Packer crashes it writes crash.log to its cwd.
    """
    template = tmp_path / "template"
    template.mkdir(exist_ok=True)
    (template / "null.pkr.hcl").write_text(NULL_TEMPLATE)
    (template / "script.pkrvars.hcl").write_text(
        "script = [" + ", ".join(f'"{line}"' for line in script) + "]\n"
    )
    return build_command(template, var_files=[template / "script.pkrvars.hcl"], **kwargs)


class Events:
    """Record (seconds since start, description) of every ui event."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seen: list[tuple[float, str]] = []

    def __call__(self, event: MachineEvent) -> None:
        text = describe_event(event)
        if text:
            self.seen.append((time.monotonic() - self.start, text))

    def texts(self) -> list[str]:
        return [t for _, t in self.seen]

    def at(self, text: str) -> float:
        return next(when for when, t in self.seen if t == text)


@pytest.fixture
def short_tmp():
    """A short temp dir: pytest's tmp_path is too long for Packer's plugin sockets."""
    path = Path(tempfile.mkdtemp(prefix="hk-"))
    yield path
    shutil.rmtree(path)


def leftover_tmpdirs(parent: Path) -> list[Path]:
    return list(parent.glob("hubkiln-packer-*"))


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@needs_packer
def test_success_streams_events_and_logs_every_line(tmp_path, short_tmp):
    argv = null_build(tmp_path, "echo one", "sleep 1", "echo two%s three", only="null.hubkiln")
    log = tmp_path / "logs" / "bake.log"
    tmp_parent = short_tmp
    events = Events()
    packer.run_packer_build(argv, log=log, on_event=events, tmp_parent=tmp_parent, cwd=tmp_path)
    texts = events.texts()
    assert texts.index("one") < texts.index("two%s three")
    assert events.at("two%s three") - events.at("one") >= 0.8, "output must arrive as it happens"
    assert any(t.startswith("Running local shell script: " + str(tmp_parent)) for t in texts)
    logged = log.read_text().splitlines()
    assert logged[0].startswith("$ packer build -machine-readable")
    assert "1" in logged[1].split(",")[0]
    assert any(line.endswith(",ui,message,    null.hubkiln: one") for line in logged)
    assert any(",artifact-count,1" in line for line in logged)
    assert leftover_tmpdirs(tmp_parent) == []


@needs_packer
def test_failure_raises_build_error_with_packer_messages(tmp_path, short_tmp):
    argv = null_build(tmp_path, "echo about to fail", "echo disk full >&2", "exit 3")
    log = tmp_path / "bake.log"
    tmp_parent = short_tmp
    with pytest.raises(BuildError) as err:
        packer.run_packer_build(argv, log=log, tmp_parent=tmp_parent, cwd=tmp_path)
    message = err.value.message
    assert message.startswith(f"Packer failed with status 1 (full log: {log})")
    assert "null.hubkiln: Script exited with non-zero exit status: 3" in message
    assert "==> null.hubkiln: disk full" in message
    assert str(log) in err.value.hint and "on_error='abort'" in err.value.hint
    assert "about to fail" in log.read_text()
    assert leftover_tmpdirs(tmp_parent) == []


@needs_packer
def test_invalid_template_error_reaches_the_message(tmp_path):
    template = tmp_path / "bad"
    template.mkdir()
    (template / "bad.pkr.hcl").write_text(
        'source "null" "x" {\n  communicator = "none"\n  bogus = 1\n}\n'
        'build {\n  sources = ["source.null.x"]\n}\n'
    )
    with pytest.raises(BuildError, match='An argument named "bogus" is not expected here'):
        packer.run_packer_build(build_command(template), log=tmp_path / "log", cwd=tmp_path)


@needs_packer
def test_unknown_only_name_is_a_build_error_not_a_silent_success(tmp_path):
    argv = null_build(tmp_path, "echo hi", only="null.nope")
    with pytest.raises(BuildError, match="built nothing") as err:
        packer.run_packer_build(argv, log=tmp_path / "log", cwd=tmp_path)
    assert "qemu.hubkiln" in err.value.hint
    packer.run_packer_build(argv, log=tmp_path / "log", cwd=tmp_path, expect_artifact=False)


def test_too_long_tmpdir_is_refused_before_packer_runs(tmp_path):
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    with pytest.raises(BuildError, match="path too long") as err:
        packer.run_packer_build(["/nonexistent/packer"], log=tmp_path / "log", tmp_parent=deep)
    assert "unix socket" in err.value.hint
    assert leftover_tmpdirs(deep) == []


def test_missing_packer_is_a_preflight_error(tmp_path, short_tmp):
    with pytest.raises(PreflightError, match="cannot run /nonexistent/packer"):
        packer.run_packer_build(
            ["/nonexistent/packer", "build", "."], log=tmp_path / "log", tmp_parent=short_tmp
        )
    assert leftover_tmpdirs(short_tmp) == []


def pids_from(pidfile: Path, timeout: float = 5) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pidfile.exists() and pidfile.read_text().endswith("\n"):
            return [int(p) for p in pidfile.read_text().split()]
        time.sleep(0.05)
    raise AssertionError(f"{pidfile} was not written")


@needs_packer
def test_keyboard_interrupt_stops_packer_and_every_child(tmp_path, short_tmp, sigint_raises):
    """SIGINT to us -> SIGINT to Packer's group; a child that ignores SIGINT gets SIGTERM."""
    pidfile = tmp_path / "pids"
    argv = null_build(
        tmp_path,
        # A background job of a non-interactive shell ignores SIGINT: a stubborn straggler.
        f"sleep 300 & echo $$ $! > {pidfile}", "echo started", "wait",
    )  # fmt: skip
    tmp_parent = short_tmp
    log = tmp_path / "bake.log"

    def on_event(event: MachineEvent) -> None:
        if describe_event(event) == "started":
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        packer.run_packer_build(
            argv, log=log, on_event=on_event, tmp_parent=tmp_parent, cwd=tmp_path,
            interrupt_grace=5, term_grace=2,
        )  # fmt: skip
    assert time.monotonic() - started < 5
    shell, sleeper = pids_from(pidfile)
    assert not alive(shell) and not alive(sleeper)
    text = log.read_text()
    assert "hubkiln: stopping Packer: SIGINT to process group" in text
    assert "Cancelling build after receiving interrupt" in text
    assert "processes left by Packer: sleep (pid" in text
    assert leftover_tmpdirs(tmp_parent) == []


@needs_packer
def test_exception_in_on_event_stops_the_build_and_propagates(tmp_path):
    pidfile = tmp_path / "pids"
    argv = null_build(tmp_path, f"echo $$ > {pidfile}", "echo started", "sleep 300")

    def on_event(event: MachineEvent) -> None:
        if describe_event(event) == "started":
            raise RuntimeError("display crashed")

    with pytest.raises(RuntimeError, match="display crashed"):
        packer.run_packer_build(
            argv, log=tmp_path / "log", on_event=on_event, cwd=tmp_path, interrupt_grace=5
        )
    (shell,) = pids_from(pidfile)
    assert not alive(shell)


@needs_packer
def test_sigterm_escalation_when_packer_ignores_sigint(tmp_path, sigint_raises):
    """A wrapper that ignores SIGINT forces the SIGTERM step; nothing survives."""
    wrapper = tmp_path / "stubborn-packer"
    wrapper.write_text("#!/bin/sh\ntrap '' INT\necho $$ > \"$PIDFILE\"\necho started\nsleep 300\n")
    wrapper.chmod(0o755)
    pidfile = tmp_path / "pid"
    log = tmp_path / "log"

    def on_event_never(event: MachineEvent) -> None:  # plain lines are not events
        raise AssertionError(event)

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        packer.run_packer_build(
            [wrapper], log=log, on_event=on_event_never, env={"PIDFILE": str(pidfile)},
            interrupt_grace=0.5, term_grace=2,
        )  # fmt: skip
    assert time.monotonic() - started < 4
    (pid,) = pids_from(pidfile)
    assert not alive(pid)
    assert "still running after 0.5 s: SIGTERM" in log.read_text()
