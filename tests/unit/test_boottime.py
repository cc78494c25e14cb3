"""hubkiln/validation/boottime.py: systemd-analyze output as the guests print it."""

from __future__ import annotations

import pytest

from hubkiln.validation import boottime

CHAIN = """\
The time when unit became active or started is printed after the "@" character.
The time the unit took to start is printed after the "+" character.

jupyterhub.service +8.518s
└─jupyterhub-proxy.service @1min 2.047s +3.117s
  └─hubkiln-firstboot.service @57.813s +4.196s
    └─cloud-init.service @41.002s +16.695s
      └─systemd-networkd-wait-online.service @38.9s +1.9s
        └─basic.target @36.441s
"""


@pytest.mark.parametrize(("span", "expected"), [
    ("345ms", 0.345), ("2.5s", 2.5), ("1min 2.047s", 62.047), ("1h 2min", 3720.0),
    ("812us", 0.001), ("3min", 180.0),
])
def test_spans(span, expected):
    assert boottime.seconds(span) == pytest.approx(expected, abs=1e-3)


def test_a_span_without_a_unit_is_refused():
    with pytest.raises(ValueError):
        boottime.seconds("soon")


def test_startup_line():
    text = ("Startup finished in 4.512s (kernel) + 1min 20.031s (userspace) = 1min 24.543s\n"
            "graphical.target reached after 1min 19.8s in userspace.\n")
    assert boottime.parse_time(text) == {"kernel": 4.512, "userspace": 80.031,
                                         "total": 84.543}


def test_a_boot_not_yet_finished_gives_no_figures():
    assert boottime.parse_time("Bootup is not yet finished (org.freedesktop.systemd1"
                               ".Manager.FinishTimestampMonotonic=0).\n") == {}
    assert boottime.parse_time("") == {}


def test_blame_is_sorted_and_cut():
    text = "  16.695s cloud-init.service\n1min 2.1s snapd.seeded.service\n 812ms ssh.service\n"
    assert boottime.parse_blame(text, top=2) == [
        {"unit": "snapd.seeded.service", "seconds": 62.1},
        {"unit": "cloud-init.service", "seconds": 16.695}]


def test_critical_chain_keeps_every_unit_in_order():
    chain = boottime.parse_critical_chain(CHAIN)
    assert [u["unit"] for u in chain][:3] == ["jupyterhub-proxy.service",
                                              "hubkiln-firstboot.service", "cloud-init.service"]
    assert chain[0] == {"unit": "jupyterhub-proxy.service", "at": 62.047, "took": 3.117}
    assert chain[-1] == {"unit": "basic.target", "at": 36.441}


def test_the_target_line_with_only_its_own_time_is_kept():
    text = "jupyterhub.service @1min 5.2s +8.518s\n└─basic.target @36.4s\n"
    assert boottime.parse_critical_chain(text)[0] == {"unit": "jupyterhub.service",
                                                     "at": 65.2, "took": 8.518}


def test_boot_record():
    record = boottime.boot_record({"time": "", "blame": "1.0s a.service\n",
                                   "critical_chain": CHAIN}, to_ssh=80.04, to_login=None)
    assert record["to_ssh_seconds"] == 80.0 and record["to_login_page_seconds"] is None
    assert record["slowest_units"] == [{"unit": "a.service", "seconds": 1.0}]
    assert len(record["critical_chain"]) == 5
