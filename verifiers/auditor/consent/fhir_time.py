"""FHIR ``date``/``dateTime``/``instant`` values as UTC microsecond bounds (pure).

Any precision (``2015``, ``2015-02``, ``2015-02-07``, ``2015-02-07T13:28:17.239+02:00``);
a time must carry its zone, as FHIR requires. A value covers ``[lower, upper)``: the
upper bound is the end of its precision. Dates without a time are taken in UTC.
"""

from __future__ import annotations

import re
from typing import Final

_DATETIME_RE: Final = re.compile(
    r"\A(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?\Z"
)
_US_PER_SECOND: Final = 1_000_000
_US_PER_DAY: Final = 86_400 * _US_PER_SECOND


# --------------------------------------------------------------------------- time


class _BadTime(Exception):
    pass


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to y-m-d (proleptic Gregorian; any year, no overflow)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _bounds(value: str, *, need_instant: bool = False) -> tuple[int, int]:
    """``[lower, upper)`` of a FHIR date/dateTime in UTC microseconds since the epoch.

    The upper bound is the end of the value's precision: ``2015`` covers the whole year,
    ``…T10:00:00Z`` the whole second. Raises ``_BadTime``.
    """
    m = _DATETIME_RE.match(value)
    if m is None:
        raise _BadTime("must be a FHIR date or dateTime (a time needs seconds and a zone)")
    g = m.groupdict()
    y = int(g["y"])
    if y == 0:
        raise _BadTime("year 0000 does not exist")
    if g["mo"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        return _days_from_civil(y, 1, 1) * _US_PER_DAY, _days_from_civil(y + 1, 1, 1) * (
            _US_PER_DAY
        )
    mo = int(g["mo"])
    if not 1 <= mo <= 12:
        raise _BadTime("no such month")
    if g["d"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        nxt = _days_from_civil(y + 1, 1, 1) if mo == 12 else _days_from_civil(y, mo + 1, 1)
        return _days_from_civil(y, mo, 1) * _US_PER_DAY, nxt * _US_PER_DAY
    d = int(g["d"])
    if not 1 <= d <= _days_in_month(y, mo):
        raise _BadTime("no such calendar date")
    day = _days_from_civil(y, mo, d) * _US_PER_DAY
    if g["h"] is None:
        if need_instant:
            raise _BadTime("must be an instant (date, time to the second and zone)")
        return day, day + _US_PER_DAY
    h, mi, s = int(g["h"]), int(g["mi"]), int(g["s"])
    if h > 23 or mi > 59 or s > 60:
        raise _BadTime("no such time of day")
    frac = g["f"] or ""
    micro = int((frac + "000000")[:6])
    unit = 10 ** (6 - len(frac)) if len(frac) < 6 else 1
    if s == 60:  # leap second: the last representable instant of the minute
        s, micro, unit = 59, 999_999, 1
    tz = g["tz"]
    offset = 0
    if tz != "Z":
        th, tm = int(tz[1:3]), int(tz[4:6])
        if tm > 59 or th > 14 or (th == 14 and tm > 0):
            raise _BadTime("no such time-zone offset")
        offset = (th * 3600 + tm * 60) * _US_PER_SECOND * (1 if tz[0] == "+" else -1)
    lower = day + (h * 3600 + mi * 60 + s) * _US_PER_SECOND + micro - offset
    return lower, lower + unit


def _instant(value: object) -> int:
    """UTC microseconds of a full FHIR instant (the request time). Raises ``_BadTime``."""
    if not isinstance(value, str):
        raise _BadTime(f"must be a string, got {type(value).__name__}")
    return _bounds(value, need_instant=True)[0]


def _format_us(us: int) -> str:
    days, rest = divmod(us, _US_PER_DAY)
    # civil_from_days (inverse of _days_from_civil)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (m <= 2)
    secs, micro = divmod(rest, _US_PER_SECOND)
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{micro:06d}Z"
