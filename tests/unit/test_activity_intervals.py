"""hubkiln_hub.activity_intervals: how fresh the hub's record of a server's activity is,
for the idle culler's timeout (the image tests' test_idle_culling.py boots it)."""

from __future__ import annotations

import pytest

from hubkiln.config import guest

hub = guest.settings()


@pytest.mark.parametrize(("minutes", "report", "poll"), [
    (1, 10, 10),      # the shortest timeout: the hub knows within 10 s
    (3, 30, 30),
    (10, 100, 60),    # the proxy is never polled less often than JupyterHub's 60 s
    (60, 300, 60),    # an hour: JupyterHub's own defaults
    (600, 300, 60),
])
def test_the_hub_learns_of_activity_within_a_sixth_of_the_timeout(minutes, report, poll):
    intervals = hub.activity_intervals({"enabled": True, "timeout_minutes": minutes})
    assert intervals == {"report": report, "proxy_poll": poll}
    # what the hub knows is never older than the timeout allows
    assert max(intervals.values()) <= max(10, minutes * 60 // 6)


def test_without_culling_jupyterhubs_defaults_stay():
    assert hub.activity_intervals({"enabled": False, "timeout_minutes": 1}) == {
        "report": 300, "proxy_poll": 60}
