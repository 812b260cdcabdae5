"""Turn msgspec validation messages into careledger field errors (private helper)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from .errors import EventValidationError, HeaderValidationError, ReferenceValidationError

E = TypeVar("E", EventValidationError, HeaderValidationError, ReferenceValidationError)

_MESSAGE = re.compile(r"\A(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?\Z", re.DOTALL)
_FIELD = re.compile(r"\AObject (?P<kind>missing required|contains unknown) field `(?P<name>.*)`\Z")
_REGEX = re.compile(r"\AExpected `str` matching regex '(?P<pattern>.*)'\Z", re.DOTALL)
_LENGTH = re.compile(r"\AExpected `(?P<type>str|array)` of length (?P<op>[<>]=) (?P<n>\d+)\Z")


def join_path(path: str, name: str) -> str:
    """``join_path("$", "a") == "a"``, ``join_path("a", "b") == "a.b"``."""
    return name if path == "$" else f"{path}.{name}"


def translate_validation_error(
    exc: msgspec.ValidationError,
    error_class: type[E],
    pattern_reasons: Mapping[str, str],
    enum_values: Mapping[str, str],
) -> E:
    """Map msgspec's ``"<reason> - at `$.a.b`"`` to ``error_class("a.b", friendly reason)``."""
    m = _MESSAGE.match(str(exc))
    assert m is not None  # the pattern matches any string
    reason, path = m["reason"], m["path"] or "$"
    field = path if path == "$" else path.removeprefix("$.")
    if fm := _FIELD.match(reason):
        field = join_path(field, fm["name"])
        kind = "missing required field" if fm["kind"] == "missing required" else "unknown field"
        return error_class(field, kind)
    if rm := _REGEX.match(reason):
        # msgspec shows the pattern with its backslashes doubled
        pattern = rm["pattern"].replace("\\\\", "\\")
        return error_class(field, pattern_reasons.get(pattern, reason))
    if lm := _LENGTH.match(reason):
        what = "string" if lm["type"] == "str" else "list"
        if lm["op"] == ">=" and lm["n"] == "1":
            return error_class(field, f"{what} must not be empty")
        limit = "at most" if lm["op"] == "<=" else "at least"
        unit = "characters" if what == "string" else "items"
        return error_class(field, f"{what} must have {limit} {lm['n']} {unit}")
    if reason.startswith("Invalid enum value") and field in enum_values:
        return error_class(field, f"{reason[8:]}; expected one of {enum_values[field]}")
    if reason.startswith(("Expected `int` >=", "Expected `int` <=")):
        return error_class(field, f"integer out of range ({reason[9:]})")
    if field != "$" and reason.startswith("Expected `") and reason.endswith(", got `null`"):
        return error_class(field, "null is not allowed (omit the field instead)")
    if reason.startswith("Expected `"):
        return error_class(field, f"wrong type: {reason[0].lower()}{reason[1:]}")
    return error_class(field, reason)
