"""When the pre-start windows of a class_schedule open and close (hubkiln_schedule).

Loads provision/files/hub/hubkiln_schedule.py as the image does; the expected
instants are written out in UTC, worked out by hand from the zone's offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hubkiln.config.guest import load_module
from hubkiln.config.guest import settings as guest_settings

HUB = Path(__file__).resolve().parents[2] / "provision" / "files" / "hub"
load_module("hubkiln_hub", HUB / "hubkiln_hub.py")  # imported beside it, as in the image
schedule_rules = load_module("hubkiln_schedule", HUB / "hubkiln_schedule.py")
BERLIN = ZoneInfo("Europe/Berlin")


def schedule(*sessions: tuple[list[str], str, int], **keys) -> dict:
    """A checked schedule with its defaults, as the service gets it."""
    data = {**keys, "sessions": [{"days": d, "start": s, "minutes": m} for d, s, m in sessions]}
    assert guest_settings().document_problems({"class_schedule": data}, "launch") == []
    return guest_settings().with_schedule_defaults(data)


def berlin(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window_at(sched: dict, now: datetime):
    return schedule_rules.prestart_window(sched, now, BERLIN)


MON_WED = schedule((["mon", "wed"], "09:00", 90), timezone="Europe/Berlin")


@pytest.mark.parametrize(("now", "open_"), [
    ("2025-03-24 08:49:59", False),  # Monday, before the lead
    ("2025-03-24 08:50:00", True),  # prestart_minutes (10) before the start
    ("2025-03-24 09:00:00", True),
    ("2025-03-24 10:29:59", True),
    ("2025-03-24 10:30:00", False),  # the end closes it
    ("2025-03-25 09:00:00", False),  # Tuesday: no class
    ("2025-03-26 09:15:00", True),  # Wednesday
])
def test_the_window_opens_with_the_lead_and_closes_at_the_end(now, open_):
    assert (window_at(MON_WED, berlin(now)) is not None) == open_


def test_the_window_names_the_session_in_utc():
    window = window_at(MON_WED, berlin("2025-03-24 09:00"))
    assert (window.opens, window.start, window.end) == (
        utc("2025-03-24 07:50"), utc("2025-03-24 08:00"), utc("2025-03-24 09:30"))
    assert window_at(MON_WED, utc("2025-03-24 08:00")) == window  # any zone for `now`


def test_a_session_past_midnight_belongs_to_its_start_day():
    late = schedule((["sun"], "23:30", 120), timezone="Europe/Berlin")
    assert window_at(late, berlin("2025-03-23 23:20")) is not None  # Sunday, the lead
    assert window_at(late, berlin("2025-03-24 01:29")).start == berlin("2025-03-23 23:30")
    assert window_at(late, berlin("2025-03-24 01:30")) is None
    assert window_at(late, berlin("2025-03-22 23:45")) is None  # Saturday


def test_a_lead_reaches_back_into_the_day_before():
    early = schedule((["mon"], "00:05", 60), timezone="Europe/Berlin")
    window = window_at(early, berlin("2025-03-23 23:56"))  # Sunday night
    assert window is not None and window.start == berlin("2025-03-24 00:05")


def test_wall_clock_starts_follow_daylight_saving():
    before, after = berlin("2025-03-24 09:00"), berlin("2025-03-31 09:00")
    assert window_at(MON_WED, before).start == utc("2025-03-24 08:00")  # CET, +1
    assert window_at(MON_WED, after).start == utc("2025-03-31 07:00")  # CEST, +2
    assert window_at(MON_WED, berlin("2025-10-27 09:00")).start == utc("2025-10-27 08:00")


def test_lengths_and_leads_are_real_minutes_across_a_change():
    night = schedule((["sun"], "01:30", 90), timezone="Europe/Berlin", prestart_minutes=10)
    window = window_at(night, utc("2025-03-30 01:00"))  # the clocks jump at 01:00 UTC
    assert window.start == utc("2025-03-30 00:30") and window.end == utc("2025-03-30 02:00")
    assert window.end.astimezone(BERLIN).hour == 4  # 90 minutes, though 2:30 on the clock
    after = schedule((["sun"], "03:05", 30), timezone="Europe/Berlin", prestart_minutes=10)
    assert window_at(after, utc("2025-03-30 00:55")).opens == utc("2025-03-30 00:55")


def test_a_start_the_clocks_skip_or_repeat():
    skipped = schedule((["sun"], "02:30", 60), timezone="Europe/Berlin")
    assert window_at(skipped, utc("2025-03-30 01:30")).start == utc("2025-03-30 01:30")  # 03:30
    repeated = schedule((["sun"], "02:30", 60), timezone="Europe/Berlin")
    assert window_at(repeated, utc("2025-10-26 00:30")).start == utc("2025-10-26 00:30")  # first


def test_overlapping_sessions_are_all_open_the_first_opened_first():
    both = schedule((["mon"], "10:00", 60), (["mon"], "09:00", 90), timezone="Europe/Berlin")
    windows = schedule_rules.open_windows(both, berlin("2025-03-24 09:55"), BERLIN)
    assert [w.start for w in windows] == [berlin("2025-03-24 09:00"), berlin("2025-03-24 10:00")]
    assert window_at(both, berlin("2025-03-24 09:55")) == windows[0]
    assert [w.start for w in schedule_rules.open_windows(both, berlin("2025-03-24 10:45"),
                                                         BERLIN)] == [berlin("2025-03-24 10:00")]


def test_the_next_window():
    nxt = schedule_rules.next_window
    assert nxt(MON_WED, berlin("2025-03-25 12:00"), BERLIN).opens == berlin("2025-03-26 08:50")
    # Inside Wednesday's window, the next is Monday's, across the weekend.
    assert nxt(MON_WED, berlin("2025-03-26 09:00"), BERLIN).start == berlin("2025-03-31 09:00")
    weekly = schedule((["fri"], "14:15", 45), timezone="Europe/Berlin")
    assert nxt(weekly, berlin("2025-03-28 14:06"), BERLIN).start == berlin("2025-04-04 14:15")


def test_a_moment_without_a_zone_is_refused():
    with pytest.raises(ValueError, match="aware"):
        window_at(MON_WED, datetime(2025, 3, 24, 9, 0))


def test_the_zone_is_the_schedules_else_the_machines(tmp_path):
    assert schedule_rules.schedule_zone(MON_WED) == BERLIN
    machine = tmp_path / "localtime"
    machine.write_bytes(resources.files("tzdata").joinpath("zoneinfo/Asia/Tokyo").read_bytes())
    zone = schedule_rules.schedule_zone({"timezone": None}, machine)
    assert datetime(2025, 3, 24, 9, tzinfo=zone).utcoffset() == timedelta(hours=9)
    assert schedule_rules.schedule_zone({"timezone": None}, tmp_path / "none") is UTC


def test_a_window_describes_its_class_in_the_schedules_zone():
    window = window_at(MON_WED, berlin("2025-03-24 09:00"))
    assert schedule_rules.describe(window, BERLIN) == (
        "the class of Mon 2025-03-24 09:00-10:30 (CET)")
    late = schedule((["sun"], "23:30", 120), timezone="Europe/Berlin")
    assert schedule_rules.describe(window_at(late, berlin("2025-03-23 23:40")), BERLIN).endswith(
        "23:30-Mon 01:30 (CET)")
