"""When to pre-start the roster's servers: the sessions of a `class_schedule` in time.

Pure functions over a checked schedule with its defaults filled in
(hubkiln_hub.CLASS_SCHEDULE_SPEC, hubkiln_hub.with_schedule_defaults). A session
starts on each of its `days` at `start`, wall-clock time in the schedule's zone,
and lasts `minutes` of real time; its pre-start window opens `prestart_minutes`
(real time) before the start and closes at the end. A session that crosses
midnight belongs to the day it starts on. Windows are DST-correct (zoneinfo): a
session keeps its wall-clock start across a change of the clocks. A start the
clocks skip on a spring-forward day (02:30 in Europe/Berlin) counts as the same
wall time in the zone's earlier offset, so as 03:30 after the change; one that
happens twice on a fall-back day counts as the first (PEP 495, fold=0).

Used by hubkiln_prestart (the pre-start service). Standard library and hubkiln_hub
(the day names) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hubkiln_hub import DAYS

#: The machine's own zone, for a schedule without `timezone`.
LOCALTIME = Path("/etc/localtime")
#: Days before and after a moment whose sessions may have a window open at it: a session
#: and its lead last at most 14 hours (720 + 120 minutes, hubkiln_hub), less than a day.
NEAR_DAYS = 1


@dataclass(frozen=True)
class Window:
    """One session's pre-start window, in UTC: [opens, end), the session [start, end)."""

    opens: datetime
    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.opens <= moment < self.end


def schedule_zone(schedule: dict[str, Any], localtime: Path = LOCALTIME) -> tzinfo:
    """The zone of the schedule's times: its `timezone`, else the machine's own zone
    (`localtime`; UTC when the machine has none)."""
    if schedule.get("timezone"):
        return ZoneInfo(schedule["timezone"])
    try:
        with open(localtime, "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return UTC


def clock_time(text: str) -> time:
    """'09:30' -> time(9, 30)."""
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def windows_on(schedule: dict[str, Any], day: date, zone: tzinfo) -> list[Window]:
    """The windows of the sessions that start on `day` (a date in `zone`), in the
    schedule's order."""
    lead = timedelta(minutes=schedule["prestart_minutes"])
    windows = []
    for session in schedule["sessions"]:
        if DAYS[day.weekday()] not in session["days"]:
            continue
        start = datetime.combine(day, clock_time(session["start"]), tzinfo=zone).astimezone(UTC)
        windows.append(Window(opens=start - lead, start=start,
                              end=start + timedelta(minutes=session["minutes"])))
    return windows


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("the moment needs a time zone (an aware datetime)")
    return moment.astimezone(UTC)


def _windows_near(schedule: dict[str, Any], moment: datetime, zone: tzinfo,
                  before: int, after: int) -> list[Window]:
    today = moment.astimezone(zone).date()
    return [window for offset in range(-before, after + 1)
            for window in windows_on(schedule, today + timedelta(days=offset), zone)]


def open_windows(schedule: dict[str, Any], now: datetime, zone: tzinfo) -> list[Window]:
    """Every window open at `now` (several when sessions overlap), the first opened first."""
    moment = _utc(now)
    near = _windows_near(schedule, moment, zone, NEAR_DAYS, NEAR_DAYS)
    return sorted({w for w in near if moment in w}, key=lambda w: (w.opens, w.end))


def prestart_window(schedule: dict[str, Any], now: datetime,
                    zone: tzinfo) -> Window | None:
    """The window open at `now` that opened first, or None when no class is near."""
    windows = open_windows(schedule, now, zone)
    return windows[0] if windows else None


def next_window(schedule: dict[str, Any], now: datetime, zone: tzinfo) -> Window | None:
    """The first window that opens after `now` (within the coming week and a day), or
    None for a schedule without a session."""
    moment = _utc(now)
    later = [w for w in _windows_near(schedule, moment, zone, NEAR_DAYS, 8)
             if w.opens > moment]
    return min(later, key=lambda w: (w.opens, w.end)) if later else None


def describe(window: Window, zone: tzinfo) -> str:
    """'the class of Mon 2025-03-31 09:00-10:30' in the schedule's zone, for the log."""
    start, end = window.start.astimezone(zone), window.end.astimezone(zone)
    same_day = start.date() == end.date()
    until = end.strftime("%H:%M") if same_day else end.strftime("%a %H:%M")
    return f"the class of {start.strftime('%a %Y-%m-%d %H:%M')}-{until} ({start.tzname()})"
