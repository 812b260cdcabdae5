"""RFC 8785 JSON Canonicalization Scheme (JCS), general form.

``canonicalize`` accepts the JSON data model as Python values (``dict`` with ``str``
keys, ``list``/``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``) and returns
the unique canonical UTF-8 encoding:

* object members sorted by their names compared as UTF-16 code-unit sequences;
* no insignificant whitespace;
* strings escaped the ECMAScript ``JSON.stringify`` way: ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``,
  other controls below U+0020 as ``\\u00xx`` (lowercase hex), everything else literal;
* numbers serialised like ECMAScript ``Number.prototype.toString`` (shortest round-trip
  digits, exponent form below 1e-6 and from 1e21).

Rejected (``ValidationError``): NaN and infinities, integers outside ±(2^53−1) (they
cannot be represented exactly as IEEE doubles), lone surrogates, non-``str`` keys and
values of any other type.

Access events and block headers are canonicalised by a faster path (msgspec with sorted
fields, see ``event.py``/``block.py``); tests prove both give identical bytes.
"""

from __future__ import annotations

import math
import re

from .errors import ValidationError

__all__ = ["MAX_SAFE_INTEGER", "canonicalize", "number_to_string"]

#: Largest integer exactly representable as an IEEE 754 double (2^53 − 1).
MAX_SAFE_INTEGER = 2**53 - 1

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
for _c in range(0x20):
    _ESCAPES.setdefault(chr(_c), f"\\u{_c:04x}")
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _escape_match(match: re.Match[str]) -> str:
    return _ESCAPES[match.group(0)]


def _string(value: str, path: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"lone surrogate in string at {path}", details={"path": path}
        ) from exc
    return '"' + _NEEDS_ESCAPE.sub(_escape_match, value) + '"'


def number_to_string(value: float) -> str:
    """Serialise a finite double the way ECMAScript ``Number.prototype.toString`` does."""
    if not math.isfinite(value):
        raise ValidationError(f"{value!r} is not a JSON number", details={"value": repr(value)})
    if value == 0:
        return "0"  # also for -0.0
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digit string that round-trips, as ECMAScript requires.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    # value = 0.<digits> * 10**n
    n = len(int_part) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = ("+" if e >= 0 else "-") + str(abs(e))
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp
    return sign + text


def _sort_key(item: tuple[str, object]) -> bytes:
    # UTF-16BE bytes compare exactly like sequences of UTF-16 code units.
    return item[0].encode("utf-16-be", "surrogatepass")


def _encode(value: object, path: str, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_string(value, path))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValidationError(f"integer at {path} is outside ±(2^53−1)", details={"path": path})
        out.append(str(int(value)))
    elif isinstance(value, float):
        try:
            out.append(number_to_string(value))
        except ValidationError as exc:
            raise ValidationError(f"{exc.message} (at {path})", details={"path": path}) from exc
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValidationError(
                    f"object key {key!r} at {path} is not a string", details={"path": path}
                )
        out.append("{")
        first = True
        for key, item in sorted(value.items(), key=_sort_key):
            if not first:
                out.append(",")
            first = False
            child = f"{path}.{key}"
            out.append(_string(key, child))
            out.append(":")
            _encode(item, child, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, f"{path}[{i}]", out)
        out.append("]")
    else:
        raise ValidationError(
            f"value of type {type(value).__name__} at {path} is not JSON",
            details={"path": path, "type": type(value).__name__},
        )


def canonicalize(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Raises :class:`~careledger_core.errors.ValidationError` for values JCS cannot
    represent (see module docstring).
    """
    out: list[str] = []
    _encode(value, "$", out)
    return "".join(out).encode("utf-8")
