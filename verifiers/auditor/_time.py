"""Event timestamps as integers (pure, no clock).

Timestamps are ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (validated upstream); these helpers turn
them into microseconds since the Unix epoch, and back, without ``datetime`` objects.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

US_PER_SECOND: Final = 1_000_000
US_PER_MINUTE: Final = 60 * US_PER_SECOND
US_PER_HOUR: Final = 60 * US_PER_MINUTE
US_PER_DAY: Final = 24 * US_PER_HOUR


@lru_cache(maxsize=4096)
def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


#: the last conversion (one event's time is converted by each step that decides it)
_last: tuple[str, int] = ("", 0)


def ts_to_us(ts: str) -> int:
    """Microseconds since the epoch of ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    global _last
    last = _last
    if last[0] == ts:
        return last[1]
    days = _days_from_civil(int(ts[0:4]), int(ts[5:7]), int(ts[8:10]))
    seconds = ((days * 24 + int(ts[11:13])) * 60 + int(ts[14:16])) * 60 + int(ts[17:19])
    us = seconds * US_PER_SECOND + int(ts[20:26])
    _last = (ts, us)
    return us


def date_to_us(date: str) -> int:
    """Microseconds since the epoch of midnight UTC of ``YYYY-MM-DD``."""
    return _days_from_civil(int(date[0:4]), int(date[5:7]), int(date[8:10])) * US_PER_DAY


def us_to_ts(us: int) -> str:
    """Inverse of :func:`ts_to_us`."""
    days, rest = divmod(us, US_PER_DAY)
    y, m, d = _civil_from_days(days)
    seconds, frac = divmod(rest, US_PER_SECOND)
    hh, seconds = divmod(seconds, 3600)
    mm, ss = divmod(seconds, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{frac:06d}Z"


def weekday_hour(us: int) -> tuple[int, int]:
    """(weekday 0 = Monday, hour 0..23) in UTC."""
    days, rest = divmod(us, US_PER_DAY)
    return (days + 3) % 7, rest // US_PER_HOUR  # 1970-01-01 was a Thursday
