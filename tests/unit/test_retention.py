"""What may be erased when (careledger/retention.py, issue 14 point 4): the retention
duty of every jurisdiction the records fall under is kept to the day, a request never
erases where the policy says it does not, a standing legal hold blocks every erasure,
and the strictest policy wins."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.retention import (
    DEFAULT_POLICIES,
    Hold,
    Policy,
    PolicyError,
    decide_request,
    expired,
    load_policies,
)

UTC = dt.UTC
HIPAA = DEFAULT_POLICIES["us-hipaa"]
GDPR = DEFAULT_POLICIES["eu-gdpr"]
KEEP10 = Policy("de-keep-10", retain_years=10, erasure_on_request=True)
CREATED = dt.datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_a_gdpr_request_erases_at_once_when_nothing_else_applies() -> None:
    decision = decide_request([GDPR], CREATED, CREATED + dt.timedelta(days=1))
    assert decision.allowed and "eu-gdpr" in decision.reason


def test_hipaa_records_are_never_erased_by_a_request_only_by_expiry() -> None:
    for years in (1, 6, 30):
        decision = decide_request([HIPAA], CREATED, CREATED.replace(year=2026 + years))
        assert not decision.allowed and decision.not_before is None
        assert "end by expiry only" in decision.reason
    # with both regimes, the request is refused: the strictest wins
    assert not decide_request([GDPR, HIPAA], CREATED, CREATED.replace(year=2040)).allowed


def test_a_retention_duty_is_kept_to_the_day() -> None:
    end = CREATED.replace(year=2036)
    before = decide_request([GDPR, KEEP10], CREATED, end - dt.timedelta(seconds=1))
    assert not before.allowed and before.not_before == end
    assert "de-keep-10 keeps these records 10 years" in before.reason
    assert decide_request([GDPR, KEEP10], CREATED, end).allowed


def test_a_duty_from_29_february_ends_on_1_march_not_a_day_early() -> None:
    leap = dt.datetime(2028, 2, 29, 12, 0, tzinfo=UTC)
    one = Policy("one-year", retain_years=1, erasure_on_request=True)
    assert not decide_request([one], leap, dt.datetime(2029, 2, 28, 23, 59, tzinfo=UTC)).allowed
    assert decide_request([one], leap, dt.datetime(2029, 3, 1, 12, 0, tzinfo=UTC)).allowed


def test_a_standing_legal_hold_blocks_a_request_and_expiry_a_lifted_one_does_not() -> None:
    now = CREATED.replace(year=2030)
    hold = Hold("H-17", placed_at=CREATED.replace(year=2029), reason="litigation 2029-114")
    refused = decide_request([GDPR], CREATED, now, [hold])
    assert not refused.allowed and "legal hold H-17" in refused.reason
    assert "litigation 2029-114" in refused.reason
    lifted = Hold("H-17", placed_at=hold.placed_at, lifted_at=now - dt.timedelta(days=1))
    assert decide_request([GDPR], CREATED, now, [lifted]).allowed
    later = Hold("H-18", placed_at=now + dt.timedelta(days=1))  # not yet placed
    assert decide_request([GDPR], CREATED, now, [later]).allowed
    purge = Policy("purge-3", retain_years=3, erasure_on_request=False, expire_years=3)
    assert not expired([purge], CREATED, now, [hold]).allowed
    assert expired([purge], CREATED, now, [lifted]).allowed


def test_records_expire_at_the_latest_end_and_never_before_a_retention_duty() -> None:
    purge = Policy("purge-7", retain_years=6, erasure_on_request=False, expire_years=7)
    assert not expired([HIPAA], CREATED, CREATED.replace(year=2099)).allowed  # no expiry
    early = expired([purge, KEEP10], CREATED, CREATED.replace(year=2035))
    assert not early.allowed and early.not_before == CREATED.replace(year=2036)
    assert expired([purge, KEEP10], CREATED, CREATED.replace(year=2036)).allowed


def _moment(draw_days: int) -> dt.datetime:
    return CREATED + dt.timedelta(days=draw_days)


policy_st = st.builds(
    lambda name, retain, request, extra: Policy(
        name, retain, request, retain + extra if extra is not None else 0
    ),
    st.sampled_from(["a", "b", "c", "d"]),
    st.integers(0, 12),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 5)),
)


@given(
    policies=st.lists(policy_st, min_size=1, max_size=3),
    days=st.integers(0, 6000),
    hold_days=st.integers(-100, 6000),
)
def test_a_hold_never_turns_a_refusal_into_an_erasure_and_no_duty_is_cut_short(
    policies: list[Policy], days: int, hold_days: int
) -> None:
    now = _moment(days)
    hold = Hold("H", placed_at=_moment(hold_days))
    free = decide_request(policies, CREATED, now)
    held = decide_request(policies, CREATED, now, [hold])
    assert not (held.allowed and not free.allowed)
    if held.allowed or free.allowed:
        for p in policies:
            assert p.erasure_on_request
            assert now >= CREATED.replace(year=CREATED.year + p.retain_years)
    gone = expired(policies, CREATED, now)
    if gone.allowed:
        assert any(p.expire_years for p in policies)
        for p in policies:
            assert now >= CREATED.replace(year=CREATED.year + p.retain_years)


def test_a_policy_file_is_read_and_its_mistakes_named(tmp_path: Path) -> None:
    good = tmp_path / "policies.toml"
    good.write_text(
        '[[policy]]\nname = "us-hipaa"\nretain_years = 6\nerasure_on_request = false\n'
        'expire_years = 7\n\n[[policy]]\nname = "eu-gdpr"\nerasure_on_request = true\n'
    )
    table = load_policies(good)
    assert table["us-hipaa"] == Policy("us-hipaa", 6, False, 7)
    assert table["eu-gdpr"] == Policy("eu-gdpr", 0, True, 0)
    assert load_policies(None) == dict(DEFAULT_POLICIES)
    for text, said in [
        ("", "no \\[\\[policy\\]\\]"),
        ("[[policy]]\nretain_years = 6\n", "no name"),
        ('[[policy]]\nname = "x"\nretain_years = "six"\n', "whole numbers"),
        ('[[policy]]\nname = "x"\nerasure_on_request = "yes"\n', "true or false"),
        ('[[policy]]\nname = "x"\nretain = 6\n', "unknown key"),
        ('[[policy]]\nname = "x"\nretain_years = 6\nexpire_years = 2\n', "cannot expire"),
        ('[[policy]]\nname = "x"\n[[policy]]\nname = "x"\n', "given twice"),
        ('[[policy]]\nname = "x y"\n', "policy name"),
        ("not toml =", "cannot read"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(PolicyError, match=said):
            load_policies(bad)


def test_naive_times_and_no_policy_are_refused() -> None:
    with pytest.raises(PolicyError, match="time zone"):
        decide_request([GDPR], CREATED.replace(tzinfo=None), CREATED)
    with pytest.raises(PolicyError, match="no policy applies"):
        decide_request([], CREATED, CREATED)
