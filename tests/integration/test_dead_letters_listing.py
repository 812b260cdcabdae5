"""`careledger dead-letters` on real Kafka: the whole topic or an honest part of it.

Before (issue 13): the listing read until 3 s passed without a record, so a slow broker
made it stop early and print a short list as if it were the whole; `--limit` cut the
list silently; with Kafka down it printed "0 dead-letter record(s)", exit 0. Now it
reads each partition to the end it had when the read began, says when `--limit` cut
it (and how many records the topic holds), and fails in one line when it cannot.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN
from processors.dead_letters import read_dead_letter_topic
from tests.integration.pipeline import run_cli

pytestmark = pytest.mark.integration

COUNT = 7


def _dead_letters(settings: Settings, count: int) -> None:
    producer = Producer(kafka_config(settings, ADMIN, {"acks": "all"}))
    failed: list[object] = []
    for n in range(count):
        producer.produce(
            settings.topic_dead_letter,
            value=f"refused input {n}".encode(),
            key=f"k{n}".encode(),
            headers=[
                ("careledger-source-topic", settings.topic_events.encode()),
                ("careledger-source-partition", b"0"),
                ("careledger-source-offset", str(n).encode()),
                ("careledger-error-code", b"NOT_JSON"),
                ("careledger-error", b"not JSON"),
            ],
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
    assert producer.flush(30) == 0
    assert not failed, failed


def test_the_listing_reads_to_the_end_and_says_when_limit_cut_it(isolated: Settings) -> None:
    _dead_letters(isolated, COUNT)
    whole = read_dead_letter_topic(isolated)
    assert (len(whole.records), whole.total, whole.truncated) == (COUNT, COUNT, False)

    listed = run_cli(isolated, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == COUNT + 1
    assert lines[-1] == f"{COUNT} dead-letter record(s) in {isolated.topic_dead_letter}"

    cut = run_cli(isolated, "dead-letters", "--limit", "3", "--json")
    assert cut.returncode == 0, cut.stderr
    assert len([json.loads(line) for line in cut.stdout.splitlines()]) == 3
    assert f"which holds {COUNT} records" in cut.stderr and "--limit" in cut.stderr


def test_an_empty_topic_is_read_to_its_end_at_once(isolated: Settings) -> None:
    empty = read_dead_letter_topic(isolated, topic=isolated.topic_quarantine)
    assert (empty.records, empty.total, empty.truncated) == ([], 0, False)
    listed = run_cli(isolated, "dead-letters", "--quarantine")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == f"0 quarantined record(s) in {isolated.topic_quarantine}"


def test_a_missing_topic_is_said_not_listed_as_empty(isolated: Settings) -> None:
    missing = isolated.replace(topic_dead_letter=isolated.topic_dead_letter + "-missing")
    listed = run_cli(missing, "dead-letters")
    assert listed.returncode == 2
    assert listed.stdout == ""
    assert listed.stderr.strip().startswith("careledger dead-letters: topic ")
    assert "does not exist" in listed.stderr
