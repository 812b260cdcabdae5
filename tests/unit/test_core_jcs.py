"""RFC 8785 canonical JSON: the RFC's own examples, agreement with the ``rfc8785``
package on arbitrary JSON, and rejection of what JCS cannot represent."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from careledger_core.errors import ValidationError
from careledger_core.jcs import MAX_SAFE_INTEGER, canonicalize

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_canonicalize_equals_rfc8785_package_on_arbitrary_json(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


@given(json_values)
def test_canonical_bytes_parse_back_to_the_same_value(value: object) -> None:
    # JSON numbers are doubles: compare as floats (safe integers convert exactly)
    assert json.loads(canonicalize(value), parse_int=float) == value


@given(st.dictionaries(st.text(), st.integers(0, 9), max_size=8))
def test_members_sorted_by_utf16_code_units_not_code_points(value: dict[str, int]) -> None:
    keys = list(json.loads(canonicalize(value)))
    assert keys == sorted(value, key=lambda k: k.encode("utf-16-be"))


def test_rfc8785_section_3_2_2_example() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(json.loads(text)) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_sorting_example() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = list(json.loads(canonicalize(value)).values())
    assert order == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",  # U+1F600 = D83D DE00 sorts before U+FB33
        "Hebrew Letter Dalet With Dagesh",
    ]


# RFC 8785 Appendix B: IEEE 754 bit patterns and their ECMAScript serialisation.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc8785_appendix_b_number_serialisation(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonicalize(value) == expected.encode("ascii")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_rejected(value: float) -> None:
    with pytest.raises(ValidationError):
        canonicalize([value])


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64])
def test_integers_beyond_double_precision_rejected(value: int) -> None:
    with pytest.raises(ValidationError, match="2\\^53"):
        canonicalize({"n": value})


def test_largest_safe_integers_accepted() -> None:
    assert (
        canonicalize([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])
        == b"[9007199254740991,-9007199254740991]"
    )


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb", {"\udc00": 1}])
def test_lone_surrogates_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        canonicalize(value)


@pytest.mark.parametrize("value", [{1: "x"}, {None: 1}, {("a",): 1}])
def test_non_string_keys_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="not a string"):
        canonicalize(value)


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_non_json_types_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="not JSON"):
        canonicalize(value)


def test_control_characters_escaped_like_ecmascript() -> None:
    text = "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028'
    expected = json.dumps(text, ensure_ascii=False).encode("utf-8")  # same rules as JCS
    assert canonicalize(text) == expected
    assert b"\\u001f" in expected and b"\\b\\t\\n\\u000b\\f\\r" in expected
