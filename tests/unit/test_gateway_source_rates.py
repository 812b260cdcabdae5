"""Each authenticated source's byte rate at the gateway (ADR 0025, issue 12): one noisy
or compromised source cannot take the gateway from the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger.config import Settings
from producers.gateway.guard import SourceRates
from producers.gateway.server import GatewayConfigError, check_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_source_may_send_its_burst_then_its_rate() -> None:
    clock = Clock()
    rates = SourceRates(1000, 4000, clock)
    assert rates.try_take("ehr", 4000) == 0.0  # a full bucket at first
    wait = rates.try_take("ehr", 500)
    assert wait == pytest.approx(0.5)  # refused, and told when it would fit
    clock.now += 0.49
    assert rates.try_take("ehr", 500) > 0
    clock.now += 0.02
    assert rates.try_take("ehr", 500) == 0.0
    assert rates.throttled == {"ehr": 2}


def test_a_flooding_source_does_not_slow_another() -> None:
    clock = Clock()
    rates = SourceRates(1000, 2000, clock)
    for _ in range(10):
        rates.try_take("flood", 2000)
    assert rates.try_take("flood", 1) > 0
    assert rates.try_take("quiet", 2000) == 0.0


def test_a_refused_request_takes_nothing() -> None:
    clock = Clock()
    rates = SourceRates(1000, 1000, clock)
    assert rates.try_take("ehr", 1000) == 0.0
    for _ in range(50):  # retrying too early never pushes the sender further back
        assert rates.try_take("ehr", 1000) == pytest.approx(1.0)
    clock.now += 1.0
    assert rates.try_take("ehr", 1000) == 0.0


def test_a_record_larger_than_the_burst_passes_on_a_full_bucket() -> None:
    clock = Clock()
    rates = SourceRates(1000, 1000, clock)
    assert rates.try_take("ehr", 5000) == 0.0  # costs the burst, not refused for ever
    assert rates.try_take("ehr", 5000) == pytest.approx(1.0)


def test_a_stream_is_slowed_by_debt_not_refused() -> None:
    clock = Clock()
    rates = SourceRates(1000, 1000, clock)
    assert rates.reserve("pacs", 1000) == 0.0
    assert rates.reserve("pacs", 500) == pytest.approx(0.5)
    assert rates.reserve("pacs", 500) == pytest.approx(1.0)  # waits add up
    clock.now += 1.0
    assert rates.reserve("pacs", 0) == 0.0
    assert rates.slowed_s["pacs"] == pytest.approx(1.5)
    assert "streams slowed 1.5 s" in rates.summary()
    # a read larger than the burst costs all its bytes (a stream is not a record)
    clock.now += 10.0
    assert rates.reserve("pacs", 3000) == pytest.approx(2.0)


def test_rate_zero_is_no_limit() -> None:
    rates = SourceRates(0, 0)
    assert all(rates.try_take("ehr", 10**9) == 0.0 for _ in range(100))
    assert rates.reserve("ehr", 10**9) == 0.0
    assert rates.summary() == "none"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gateway_source_bytes_per_s": -1}, "gateway_source_bytes_per_s"),
        (
            {"gateway_source_burst_bytes": 1000, "gateway_max_record_bytes": 65536},
            "gateway_source_burst_bytes must be at least gateway_max_record_bytes",
        ),
    ],
)
def test_settings_that_would_refuse_every_record_are_refused(
    changes: dict[str, int], message: str
) -> None:
    with pytest.raises(GatewayConfigError, match=message):
        check_settings(Settings().replace(**changes))


def test_the_gateway_on_a_sealed_ledger_without_the_ingest_key_refuses_to_start() -> None:
    """ADR 0037: its raw records are the bytes received, names and all; without the
    processor's ingest public key it could not seal them, and says so instead of leaving
    them in clear on a sealed ledger."""
    with pytest.raises(GatewayConfigError, match="set ingest_public_key"):
        check_settings(Settings().replace(seal_events=True))
    # with it, the settings are those of a sealed ledger's gateway
    check_settings(
        Settings().replace(seal_events=True, ingest_public_key=Path("/run/ingest.key.pub"))
    )
