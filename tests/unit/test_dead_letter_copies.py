"""Dead letters are at-least-once; the reader lists each refused input once.

The processor flushes a dead letter before the block holding its offset is stored,
so a processor SIGKILLed between the two sends it again on restart (seen in CI:
``test_batch_records`` found the malformed event's dead letter twice). These tests
pin what :func:`processors.dead_letters.collapse_copies` merges and what it must not.
"""

from __future__ import annotations

from dataclasses import replace

from processors.dead_letters import DeadLetter, collapse_copies


def _dl(dlq_offset: int, **kw: object) -> DeadLetter:
    base = DeadLetter(
        dlq_partition=0,
        dlq_offset=dlq_offset,
        source_topic="careledger.access-events",
        source_partition=1,
        source_offset=40,
        code="EVENT_INVALID",
        reason="not JSON",
        field="",
        key=b"k",
        value=b"{not json",
        batch_index=34,
        batch_seq=1235,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_dead_letter_resent_after_a_restart_is_listed_once_with_its_copies() -> None:
    [one] = collapse_copies([_dl(0), _dl(7)])
    assert (one.dlq_offset, one.copies) == (0, 2)
    assert one.summary()["copies"] == 2


def test_a_single_dead_letter_says_nothing_about_copies() -> None:
    [one] = collapse_copies([_dl(3)])
    assert one.copies == 1 and "copies" not in one.summary()


def test_other_events_of_the_same_record_are_not_merged() -> None:
    out = collapse_copies([_dl(0), _dl(1, batch_index=35, batch_seq=1236), _dl(2)])
    assert [(d.batch_index, d.copies) for d in out] == [(34, 2), (35, 1)]


def test_the_same_position_with_other_bytes_or_reason_is_not_hidden() -> None:
    # an insider writing to the topic cannot hide a dead letter behind a look-alike
    out = collapse_copies(
        [_dl(0), _dl(1, value=b"{other"), _dl(2, code="TOO_LARGE"), _dl(3, quarantined=True)]
    )
    assert [d.copies for d in out] == [1, 1, 1, 1]


def test_gateway_dead_letters_have_no_kafka_position_and_are_never_merged() -> None:
    gw = {"source_topic": "gateway/syslog-tcp", "source_partition": -1, "source_offset": -1}
    out = collapse_copies([_dl(0, **gw), _dl(1, **gw)])
    assert [(d.dlq_offset, d.copies) for d in out] == [(0, 1), (1, 1)]


def test_order_is_the_topics_first_occurrences() -> None:
    out = collapse_copies(
        [_dl(0, source_offset=9), _dl(1, source_offset=5), _dl(2, source_offset=9)]
    )
    assert [(d.source_offset, d.copies) for d in out] == [(9, 2), (5, 1)]
