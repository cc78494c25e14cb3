"""The guest's boot helpers, run here as the units run them: hubkiln-hub (JupyterHub
imported beside hubkiln-firstboot, started after it), hubkiln-wait-listening
(jupyterhub.service is active once the hub listens) and hubkiln-autogroup-nice (the
hub's session gets its CPU share; a process that leads no session is refused)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parents[2] / "provision/files/bin"


def run(tool: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BIN / tool), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_waiting_ends_as_soon_as_the_port_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        result = run("hubkiln-wait-listening", str(server.getsockname()[1]), "30")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5
    assert "accepts connections" in result.stdout


def test_a_port_that_starts_listening_later_is_waited_for():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waiter = subprocess.Popen(["bash", str(BIN / "hubkiln-wait-listening"), str(port), "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert waiter.poll() is None  # still waiting: nothing listens yet
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        assert waiter.wait(timeout=10) == 0


def test_nothing_listening_fails_after_the_limit():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("hubkiln-wait-listening", str(port), "1")
    assert result.returncode == 1
    assert f"nothing listens on 127.0.0.1:{port} after 1 s" in result.stderr


@pytest.mark.parametrize("args", [[], ["8081"], ["x", "5"], ["0", "5"], ["70000", "5"]])
def test_bad_arguments_are_refused(args):
    result = run("hubkiln-wait-listening", *args)
    assert result.returncode == 1 and "ERROR" in result.stderr


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/autogroup"),
                    reason="this kernel has no autogroups (the tool then does nothing)")
@pytest.mark.skipif(os.geteuid() != 0, reason="setting an autogroup nice needs root")
def test_a_session_leader_gets_its_autogroup_nice():
    leader = subprocess.Popen(["setsid", "sleep", "30"])
    try:
        result = run("hubkiln-autogroup-nice", str(leader.pid), "3")
        assert result.returncode == 0, result.stderr
        assert Path(f"/proc/{leader.pid}/autogroup").read_text().split()[-1] == "3"
    finally:
        leader.kill()


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/autogroup"),
                    reason="this kernel has no autogroups (the tool then does nothing)")
def test_a_process_that_leads_no_session_is_refused():
    # A child in this test's session: after 5 s of waiting the tool gives up, and the
    # session it belongs to keeps its nice.
    before = Path(f"/proc/{os.getpid()}/autogroup").read_text()
    child = subprocess.Popen(["sleep", "30"])
    try:
        result = run("hubkiln-autogroup-nice", str(child.pid), "5")
        assert result.returncode == 1
        assert f"process {child.pid} leads no session" in result.stderr
        assert Path(f"/proc/{os.getpid()}/autogroup").read_text() == before
    finally:
        child.kill()


# ------------------------------------------------------------------ hubkiln-hub
def load_launcher(monkeypatch, tmp_path: Path, proxy_port: int):
    loader = importlib.machinery.SourceFileLoader("hubkiln_hub_launcher",
                                                  str(BIN / "hubkiln-hub"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    launcher = importlib.util.module_from_spec(spec)
    loader.exec_module(launcher)
    monkeypatch.setattr(launcher, "DONE", str(tmp_path / "firstboot.done"))
    monkeypatch.setattr(launcher, "TOKEN_FILE", str(tmp_path / "proxy-auth-token.env"))
    monkeypatch.setattr(launcher, "PROXY_API", ("127.0.0.1", proxy_port))
    monkeypatch.setattr(launcher, "POLL_SECONDS", 0.02)
    return launcher


@pytest.fixture
def proxy_api():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_the_hub_waits_for_first_boot_then_reads_the_token_it_made(monkeypatch, tmp_path,
                                                                   proxy_api, capsys):
    launcher = load_launcher(monkeypatch, tmp_path, proxy_api)
    environ: dict[str, str] = {}

    def first_boot():  # hubkiln-firstboot: the token, then the flag
        time.sleep(0.3)
        (tmp_path / "proxy-auth-token.env").write_text("CONFIGPROXY_AUTH_TOKEN=" + "ab" * 32)
        (tmp_path / "firstboot.done").touch()

    worker = threading.Thread(target=first_boot)
    worker.start()
    started = time.monotonic()
    launcher.prepare(environ)
    worker.join()
    assert time.monotonic() - started >= 0.3
    assert environ["CONFIGPROXY_AUTH_TOKEN"] == "ab" * 32
    assert "waiting for this boot's launch settings" in capsys.readouterr().out


def test_a_restarted_hub_waits_for_nothing_and_keeps_the_units_token(monkeypatch, tmp_path,
                                                                     proxy_api, capsys):
    launcher = load_launcher(monkeypatch, tmp_path, proxy_api)
    (tmp_path / "firstboot.done").touch()
    (tmp_path / "proxy-auth-token.env").write_text("CONFIGPROXY_AUTH_TOKEN=other\n")
    environ = {"CONFIGPROXY_AUTH_TOKEN": "from-the-unit"}
    launcher.prepare(environ)
    assert environ["CONFIGPROXY_AUTH_TOKEN"] == "from-the-unit"
    assert capsys.readouterr().out == ""


def test_a_first_boot_that_never_ends_delays_the_hub_only_so_long(monkeypatch, tmp_path,
                                                                   proxy_api, capsys):
    launcher = load_launcher(monkeypatch, tmp_path, proxy_api)
    monkeypatch.setattr(launcher, "WAIT_SECONDS", 0.3)
    launcher.prepare({})
    out = capsys.readouterr().out
    assert "gave up waiting for hubkiln-firstboot.service after 0 s" in out
    assert "no proxy token in" in out


def test_the_hub_waits_until_the_proxy_listens(monkeypatch, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = load_launcher(monkeypatch, tmp_path, port)
    (tmp_path / "firstboot.done").touch()
    opened = threading.Event()

    def proxy_starts():
        time.sleep(0.3)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(8)
            opened.set()
            time.sleep(2)

    worker = threading.Thread(target=proxy_starts)
    worker.start()
    launcher.prepare({"CONFIGPROXY_AUTH_TOKEN": "x"})
    assert opened.is_set()
    worker.join()
