"""JSON values of reference records: frozen JSON and the field checks bodies are built with.

``FrozenJSONObject``/``thaw`` keep record bodies immutable; ``_freeze`` validates a
generic JSON value (no NaN, no lone surrogates, integers within ±(2^53−1)). The
``_``-prefixed checks (``_members``, ``_string``, ``_timestamp``, ...) validate one
member each and raise :class:`~careledger_core.errors.ReferenceValidationError` with a
precise ``field`` path; they are shared by ``reference`` and ``reference_bodies`` only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn

from .errors import ReferenceValidationError
from .event import MAX_ID_LENGTH, MAX_LIST_LENGTH, MAX_TEXT_LENGTH, is_valid_timestamp
from .jcs import MAX_SAFE_INTEGER, canonicalize

_DATE_RE: Final = re.compile(r"\A[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\Z")
_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# --------------------------------------------------------------------------- frozen JSON


class FrozenJSONObject(dict[str, Any]):
    """A JSON object that cannot be changed (bodies of records are shared, never copied).

    It is a ``dict`` (so ``canonicalize``, ``json.dumps`` and ``isinstance(x, dict)``
    work); nested objects are frozen too and arrays are tuples. ``thaw`` gives plain
    mutable JSON.
    """

    __slots__ = ()

    def _immutable(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("reference record bodies are immutable; use thaw() for a copy")

    __setitem__ = _immutable
    __delitem__ = _immutable
    clear = _immutable
    pop = _immutable
    popitem = _immutable
    setdefault = _immutable
    update = _immutable
    __ior__ = _immutable

    def __reduce__(self) -> tuple[object, ...]:
        return (FrozenJSONObject, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(canonicalize(self))


def thaw(value: Any) -> Any:
    """Plain mutable JSON (``dict``/``list``) of a frozen body or value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _join(path: str, name: str) -> str:
    return name if path == "$" else f"{path}.{name}"


def _fail(path: str, reason: str) -> NoReturn:
    raise ReferenceValidationError(path, reason)


def _freeze(value: object, path: str, *, allow_null: bool) -> Any:
    """Validate a generic JSON value and return an immutable copy."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _fail(path, "lone surrogate: not valid Unicode")
        return value
    if value is True or value is False:
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            _fail(path, "integer outside ±(2^53−1)")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, "NaN and infinities are not JSON")
        return value
    if value is None:
        if not allow_null:
            _fail(path, "null is not allowed (omit the field instead)")
        return None
    if isinstance(value, Mapping):
        for dup in getattr(value, "duplicates", ()):
            _fail(_join(path, dup), "duplicate member name")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"member name {key!r} is not a string")
            child = _join(path, key)
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                _fail(child, "lone surrogate in member name: not valid Unicode")
            out[key] = _freeze(item, child, allow_null=allow_null)
        return FrozenJSONObject(out)
    if isinstance(value, list | tuple):
        return tuple(
            _freeze(item, f"{path}[{i}]", allow_null=allow_null) for i, item in enumerate(value)
        )
    _fail(path, f"a {type(value).__name__} is not a JSON value")


# --------------------------------------------------------------------------- field checks


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _wrong_type(path: str, expected: str, value: object) -> NoReturn:
    if value is None:
        _fail(path, "null is not allowed (omit the field instead)")
    _fail(path, f"wrong type: expected {expected}, got {_type_name(value)}")


def _members(
    obj: object, path: str, required: Iterable[str], optional: Iterable[str]
) -> Mapping[str, Any]:
    """``obj`` as an object that has every required member and no unknown one."""
    if not isinstance(obj, Mapping):
        _wrong_type(path, "object", obj)
    required = tuple(required)
    allowed = set(required).union(optional)
    for name in required:
        if name not in obj:
            _fail(_join(path, name), "missing required field")
    for name in obj:
        if name not in allowed:
            _fail(_join(path, str(name)), "unknown field")
    return obj


def _string(obj: Mapping[str, Any], name: str, path: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not value:
        _fail(p, "string must not be empty")
    if len(value) > max_length:
        _fail(p, f"string must have at most {max_length} characters")
    return value


def _opt_string(
    obj: Mapping[str, Any], name: str, path: str, max_length: int = MAX_TEXT_LENGTH
) -> str | None:
    return _string(obj, name, path, max_length) if name in obj else None


def _ident(obj: Mapping[str, Any], name: str, path: str) -> str:
    return _string(obj, name, path, MAX_ID_LENGTH)


def _opt_ident(obj: Mapping[str, Any], name: str, path: str) -> str | None:
    return _string(obj, name, path, MAX_ID_LENGTH) if name in obj else None


def _choice(obj: Mapping[str, Any], name: str, path: str, choices: Iterable[str]) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    choices = tuple(choices)
    if value not in choices:
        _fail(p, f"invalid value {value!r}; expected one of {', '.join(choices)}")
    return value


def _integer(obj: Mapping[str, Any], name: str, path: str, low: int, high: int) -> int:
    p = _join(path, name)
    value = obj[name]
    if type(value) is not int:
        _wrong_type(p, "integer", value)
    if not low <= value <= high:
        _fail(p, f"integer out of range ({low}..{high})")
    return value


def _boolean(obj: Mapping[str, Any], name: str, path: str) -> bool:
    p = _join(path, name)
    value = obj[name]
    if value is not True and value is not False:
        _wrong_type(p, "boolean", value)
    return bool(value)


def _timestamp(obj: Mapping[str, Any], name: str, path: str) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not is_valid_timestamp(value):
        _fail(p, "must be a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ (6 fraction digits)")
    return value


def _is_valid_date(value: str) -> bool:
    if _DATE_RE.match(value) is None:
        return False
    year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS_IN_MONTH[month]


def _date(obj: Mapping[str, Any], name: str, path: str) -> str:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, str):
        _wrong_type(p, "string", value)
    if not _is_valid_date(value):
        _fail(p, "must be a calendar date YYYY-MM-DD")
    return value


def _array(obj: Mapping[str, Any], name: str, path: str) -> tuple[Any, ...]:
    p = _join(path, name)
    value = obj[name]
    if not isinstance(value, list | tuple):
        _wrong_type(p, "array", value)
    if len(value) > MAX_LIST_LENGTH:
        _fail(p, f"list must have at most {MAX_LIST_LENGTH} items")
    return tuple(value)


def _codes(obj: Mapping[str, Any], name: str, path: str) -> tuple[str, ...]:
    items = _array(obj, name, path)
    p = _join(path, name)
    out: list[str] = []
    for i, item in enumerate(items):
        ip = f"{p}[{i}]"
        if not isinstance(item, str):
            _wrong_type(ip, "string", item)
        if not item:
            _fail(ip, "string must not be empty")
        if len(item) > MAX_ID_LENGTH:
            _fail(ip, f"string must have at most {MAX_ID_LENGTH} characters")
        out.append(item)
    return tuple(out)
