"""Idle culling (`hub.idle_culling`): a server nobody uses is stopped once the timeout has
passed, and a server in use is not.

Two roster students start their servers; the first keeps running a cell every 10 s,
the second does nothing. The timeout comes from the settings given (the profile's
`hub.idle_culling.timeout_minutes`), never from the image, and the wait is that
timeout, plus the culler's own period (half the timeout) and the lag of the hub's
activity record (hubkiln_hub.activity_intervals), plus a margin. A culler that ignored
the timeout fails either way: too early (before the timeout) or never (within the
bound). A real wait: only timeouts of a few minutes are tried, which
tests/variants/culling.yaml boots (`invoke validate --profile=ci
--variant=tests/variants/culling.yaml --select idle_culling`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from hubkiln.config import guest

#: The longest timeout this test waits for (minutes).
LONGEST_WAIT_MINUTES = 3
#: How often the student in use runs a cell (seconds).
CELL_EVERY = 10
#: Beyond the timeout, the culler's period and the activity lag (seconds).
MARGIN = 60


@pytest.fixture(scope="module")
def timeout(settings: dict[str, Any]) -> int:
    """The culling timeout of the settings given, in seconds."""
    culling = settings["idle_culling"]
    if not culling["enabled"]:
        pytest.skip("idle culling is disabled by the profile")
    if culling["timeout_minutes"] > LONGEST_WAIT_MINUTES:
        pytest.skip(f"the timeout is {culling['timeout_minutes']} minutes; this test waits "
                    f"for at most {LONGEST_WAIT_MINUTES} (tests/variants/culling.yaml: 1)")
    return culling["timeout_minutes"] * 60


def server_running(session: Any) -> bool:
    """Whether the hub says the student's server runs (their own view of their model)."""
    api = {"X-XSRFToken": session.client.cookie("_xsrf", "/hub") or ""}
    status, _, text = session.client.request("GET", f"/hub/api/users/{session.name}",
                                             headers=api)
    assert status == 200, f"{session.name}'s user model: HTTP {status}: {text[:300]}"
    return bool((json.loads(text).get("servers") or {}).get("", {}).get("ready"))


@pytest.fixture(scope="module")
def watched(host, settings, timeout, student, log_in, open_kernel, _student_sessions):
    """The first student in use (a cell every CELL_EVERY s), the second idle, watched until
    the second's server stops or the bound passes: {idle_stopped_after, bound, active_ran,
    active_running}, seconds counted from the idle student's last request."""
    hub = guest.settings()
    lag = max(hub.activity_intervals(settings["idle_culling"]).values())
    bound = timeout + timeout // 2 + lag + MARGIN
    busy = student
    idle = log_in(next(name for name in settings["users"] if name != busy.name))
    kernel = open_kernel(busy)
    last_request = time.monotonic()  # login_and_spawn's last request opened idle's server
    stopped_after, ran = None, 0
    try:
        while time.monotonic() - last_request < bound:
            assert kernel.execute("1 + 1", timeout=60).error is None
            ran += 1
            if not server_running(idle):
                stopped_after = time.monotonic() - last_request
                break
            time.sleep(CELL_EVERY)
        # The server in use must outlive the idle one by another pass of the culler
        # (every half timeout) that sees its activity.
        until = time.monotonic() + timeout // 2 + lag + 5
        while stopped_after is not None and time.monotonic() < until:
            assert kernel.execute("1 + 1", timeout=60).error is None
            ran += 1
            time.sleep(CELL_EVERY)
        active_running = server_running(busy)
    finally:
        kernel.shutdown()
        _student_sessions.pop(idle.name, None)  # its server is gone: log in afresh later
    units = {name: host.run(f"systemctl is-active jupyter-{name}-singleuser").stdout.strip()
             for name in (busy.name, idle.name)}
    seen = {"idle_stopped_after": stopped_after, "bound": bound, "active_ran": ran,
            "active_running": active_running, "units": units, "busy": busy.name,
            "idle": idle.name}
    if os.environ.get("HUBKILN_TEST_REPORTS"):  # the measurement, for the record
        Path(os.environ["HUBKILN_TEST_REPORTS"], "idle-culling.json").write_text(json.dumps(
            {"timeout_seconds": timeout, **{key: seen[key] for key in (
                "idle_stopped_after", "bound", "active_ran", "active_running")}}))
    return seen


def test_an_idle_server_is_stopped_after_the_timeout(watched, timeout, journal):
    after = watched["idle_stopped_after"]
    assert after is not None, (
        f"{watched['idle']}'s idle server still runs {watched['bound']}s after its last "
        f"request (timeout {timeout}s)" + journal("jupyterhub.service"))
    # Not before the timeout (the hub's record may lag our last request by the poll).
    assert after >= timeout - 15, f"stopped after {after:.0f}s, before the {timeout}s timeout"
    assert watched["units"][watched["idle"]] != "active", watched["units"]


def test_a_server_in_use_is_not_stopped(watched, journal):
    assert watched["active_running"], (
        f"{watched['busy']}'s server, running a cell every {CELL_EVERY}s, was stopped"
        + journal("jupyterhub.service"))
    assert watched["units"][watched["busy"]] == "active", watched["units"]
    assert watched["active_ran"] >= 3
