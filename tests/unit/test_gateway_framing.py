"""Syslog framing (RFC 6587): octet counting, non-transparent, mixed, partial, oversize."""

from __future__ import annotations

import random

import pytest

from producers.gateway.framing import Frame, FrameDecoder, FrameError, octet_counted

MSG_A = b"<85>1 2026-11-29T10:00:00Z host app 1 IHE+RFC-3881 - <AuditMessage/>"
MSG_B = b'<13>1 - - - - - [x@1 a="b\\"]c"] <?xml version="1.0"?>\n<AuditMessage>\n</AuditMessage>'


def frames(items: list[Frame | FrameError]) -> list[bytes]:
    assert all(isinstance(i, Frame) for i in items), items
    return [i.data for i in items if isinstance(i, Frame)]


def test_octet_counting_frames_may_contain_newlines() -> None:
    d = FrameDecoder(1 << 20)
    got = d.feed(octet_counted(MSG_A) + octet_counted(MSG_B))
    assert frames(got) == [MSG_A, MSG_B]
    assert {i.framing for i in got if isinstance(i, Frame)} == {"octet-counting"}
    assert d.close() == []


def test_non_transparent_frames_end_at_lf_and_drop_cr() -> None:
    d = FrameDecoder(1 << 20)
    got = d.feed(MSG_A + b"\r\n" + MSG_A + b"\n")
    assert frames(got) == [MSG_A, MSG_A]
    assert got[0].framing == "non-transparent"  # type: ignore[union-attr]


def test_mixed_framing_is_detected_per_frame() -> None:
    d = FrameDecoder(1 << 20)
    stream = octet_counted(MSG_A) + MSG_A + b"\n" + octet_counted(MSG_B) + b"\n" + MSG_A + b"\n"
    got = d.feed(stream)
    assert frames(got) == [MSG_A, MSG_A, MSG_B, MSG_A]
    assert [i.framing for i in got if isinstance(i, Frame)] == [
        "octet-counting",
        "non-transparent",
        "octet-counting",
        "non-transparent",
    ]


@pytest.mark.parametrize("seed", range(5))
def test_partial_reads_give_the_same_frames(seed: int) -> None:
    rnd = random.Random(seed)
    stream = b"".join(
        octet_counted(MSG_B) if rnd.random() < 0.5 else MSG_A + b"\n" for _ in range(50)
    )
    whole = frames(FrameDecoder(1 << 20).feed(stream))
    d = FrameDecoder(1 << 20)
    got: list[Frame | FrameError] = []
    pos = 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 7, 64, 500])
        got += d.feed(stream[pos : pos + step])
        pos += step
    got += d.close()
    assert frames(got) == whole
    assert len(whole) == 50


def test_one_byte_at_a_time_through_the_length_prefix() -> None:
    d = FrameDecoder(1 << 20)
    data = octet_counted(MSG_A)
    got: list[Frame | FrameError] = []
    for i in range(len(data)):
        got += d.feed(data[i : i + 1])
    assert frames(got) == [MSG_A]


def test_oversized_octet_counted_frame_is_skipped_and_stream_stays_in_sync() -> None:
    big = b"<85>1 - - - - - - " + b"x" * 5000
    d = FrameDecoder(1000, keep=100)
    got = d.feed(octet_counted(big) + octet_counted(MSG_A))
    assert isinstance(got[0], FrameError)
    assert got[0].code == "FRAME_TOO_LARGE"
    assert got[0].size == len(big)
    assert got[0].prefix == big[:100]
    assert frames(got[1:]) == [MSG_A]


def test_oversized_octet_counted_frame_across_reads() -> None:
    big = b"<85>1 - - - - - - " + b"y" * 5000
    data = octet_counted(big) + octet_counted(MSG_A)
    d = FrameDecoder(1000, keep=50)
    got: list[Frame | FrameError] = []
    for i in range(0, len(data), 333):
        got += d.feed(data[i : i + 333])
    assert [type(i) for i in got] == [FrameError, Frame]
    assert got[0].prefix == big[:50]  # type: ignore[union-attr]
    assert d.buffered == 0


def test_oversized_non_transparent_frame_is_skipped_to_the_next_lf() -> None:
    big = b"<85>1 - - - - - - " + b"z" * 5000
    d = FrameDecoder(1000, keep=64)
    got: list[Frame | FrameError] = []
    data = big + b"\n" + MSG_A + b"\n"
    for i in range(0, len(data), 700):
        got += d.feed(data[i : i + 700])
    assert isinstance(got[0], FrameError) and got[0].framing == "non-transparent"
    assert got[0].size == len(big) and got[0].prefix == big[:64]
    assert frames(got[1:]) == [MSG_A]
    assert d.buffered < 1000  # never held the whole oversized frame


def test_frame_of_exactly_the_bound_is_accepted() -> None:
    msg = b"<85>1 - - - - - - " + b"q" * (1000 - 18)
    assert len(msg) == 1000
    assert frames(FrameDecoder(1000).feed(octet_counted(msg))) == [msg]
    assert frames(FrameDecoder(1000).feed(msg + b"\n")) == [msg]


def test_end_of_stream_inside_an_octet_counted_frame_is_truncated() -> None:
    d = FrameDecoder(1 << 20)
    data = octet_counted(MSG_A)
    assert d.feed(data[:-5]) == []
    (err,) = d.close()
    assert isinstance(err, FrameError) and err.code == "FRAME_TRUNCATED"
    assert err.size == len(MSG_A) and err.prefix == data[:-5]


def test_unterminated_non_transparent_frame_at_close_is_a_frame() -> None:
    d = FrameDecoder(1 << 20)
    assert d.feed(MSG_A) == []
    assert frames(d.close()) == [MSG_A]


def test_separators_between_frames_are_skipped() -> None:
    d = FrameDecoder(1 << 20)
    got = d.feed(octet_counted(MSG_A) + b"\n\r\n\x00 " + octet_counted(MSG_A) + b"\n")
    assert frames(got) == [MSG_A, MSG_A]


def test_garbage_is_a_frame_for_the_parser_to_refuse() -> None:
    d = FrameDecoder(1 << 20)
    assert frames(d.feed(b"hello world\n12abc\n")) == [b"hello world", b"12abc"]


def test_a_64_kib_frame() -> None:
    msg = b"<85>1 - - - - - - " + b"a" * (64 * 1024)
    assert frames(FrameDecoder(1 << 20).feed(octet_counted(msg))) == [msg]
