"""The hospital traffic simulator: reproducible, valid, and realistic enough to test on."""

from __future__ import annotations

import base64
import collections
import datetime as dt
import random
import time
import uuid
from pathlib import Path

import pytest

from careledger.kafka.producer import partition_key
from careledger_core.event import (
    AccessEvent,
    canonical_event_bytes,
    decode_event,
    is_valid_timestamp,
    validate_event,
)
from commands.cli import main as cli_main
from producers.simulator import (
    DCM,
    DEFAULT_START,
    NO_PATIENT,
    HospitalModel,
    _uuid4,
    format_timestamp,
    parse_start,
    simulate,
)

SAMPLE = 20_000


@pytest.fixture(scope="module")
def model() -> HospitalModel:
    return HospitalModel(seed=42)


@pytest.fixture(scope="module")
def events(model: HospitalModel) -> list[AccessEvent]:
    return list(simulate(model, SAMPLE, seed=42))


def _canonical(events: list[AccessEvent]) -> list[bytes]:
    return [canonical_event_bytes(e) for e in events]


def _subtype(e: AccessEvent) -> str | None:
    return e.event_subtype[0].code if e.event_subtype else None


# --------------------------------------------------------------------------- reproducible
def test_same_seed_gives_the_same_bytes(events: list[AccessEvent]) -> None:
    again = list(simulate(HospitalModel(seed=42), SAMPLE, seed=42))
    assert _canonical(again) == _canonical(events)


def test_a_different_seed_gives_different_traffic(events: list[AccessEvent]) -> None:
    other = list(simulate(HospitalModel(seed=43), 2_000, seed=43))
    assert _canonical(other) != _canonical(events[:2_000])
    # even with the same hospital, the event seed alone changes the traffic
    same_model = list(simulate(HospitalModel(seed=42), 2_000, seed=7))
    assert {e.event_id for e in same_model}.isdisjoint(e.event_id for e in events[:2_000])


def test_a_prefix_is_stable_whatever_the_count(events: list[AccessEvent]) -> None:
    assert _canonical(list(simulate(HospitalModel(seed=42), 500, seed=42))) == _canonical(
        events[:500]
    )


def test_the_model_is_deterministic() -> None:
    a = HospitalModel(staff=120, patients=500, seed=9)
    b = HospitalModel(staff=120, patients=500, seed=9)
    assert [m.actor for m in a.staff] == [m.actor for m in b.staff]
    assert [(p.mrn, p.care_team, p.sensitivity) for p in a.patients] == [
        (p.mrn, p.care_team, p.sensitivity) for p in b.patients
    ]
    c = HospitalModel(staff=120, patients=500, seed=10)
    assert [m.id for m in a.staff] != [m.id for m in c.staff]


def test_simulated_time_follows_start_not_the_wall_clock(model: HospitalModel) -> None:
    start = dt.datetime(2027, 3, 1, 8, 30, tzinfo=dt.UTC)
    first = list(simulate(model, 200, seed=5, start=start))
    assert first[0].occurred_at >= format_timestamp(start)
    assert first[-1].occurred_at < "2027-03-02"
    assert _canonical(first) == _canonical(list(simulate(model, 200, seed=5, start=start)))


# --------------------------------------------------------------------------- valid
def test_every_event_is_valid_on_the_wire(events: list[AccessEvent]) -> None:
    for e in events:
        wire = canonical_event_bytes(e)
        decoded = decode_event(wire)
        assert decoded == e
        assert canonical_event_bytes(decoded) == wire
    # full constraint check (lengths, patterns) on a slice: the constructors skip it
    for e in events[:2_000]:
        assert validate_event(e) == e


def test_timestamps_and_ids(events: list[AccessEvent]) -> None:
    previous = ""
    for e in events:
        assert is_valid_timestamp(e.occurred_at), e.occurred_at
        assert is_valid_timestamp(e.recorded_at), e.recorded_at
        assert e.recorded_at >= e.occurred_at
        assert e.occurred_at >= previous, "events come in occurred_at order"
        previous = e.occurred_at
        u = uuid.UUID(e.event_id)
        assert str(u) == e.event_id and u.version == 4
    assert len({e.event_id for e in events}) == len(events)
    assert events[0].occurred_at >= format_timestamp(DEFAULT_START)


def test_fast_uuid_matches_the_uuid_module() -> None:
    rng = random.Random(1)
    for bits in [0, 2**128 - 1, *(rng.getrandbits(128) for _ in range(2_000))]:
        assert _uuid4(bits) == str(uuid.UUID(int=bits, version=4))


def test_timestamp_formatting() -> None:
    moment = dt.datetime(2028, 2, 29, 23, 59, 59, 7, tzinfo=dt.UTC)
    assert format_timestamp(moment) == "2028-02-29T23:59:59.000007Z"
    assert parse_start("2026-11-02") == DEFAULT_START
    assert parse_start("2026-11-02T01:00:00+01:00") == DEFAULT_START
    assert parse_start("2026-11-02T00:00:00Z") == DEFAULT_START


# --------------------------------------------------------------------------- realistic
def test_reads_dominate_and_every_action_appears(events: list[AccessEvent]) -> None:
    actions = collections.Counter(e.action for e in events)
    assert set(actions) == {"C", "R", "U", "D", "E"}
    assert actions.most_common(1)[0][0] == "R"
    assert actions["R"] > 0.4 * len(events)
    assert actions["D"] < actions["U"] < actions["C"] < actions["R"]


def test_reads_are_mostly_by_the_care_team(model: HospitalModel, events: list[AccessEvent]) -> None:
    by_mrn = {p.mrn: p for p in model.patients}
    by_id = {m.id: m for m in model.staff}
    clinical = [
        e
        for e in events
        if e.action == "R"
        and by_id[e.actor.id].role in ("physician", "nurse")
        and "ETREAT" not in e.purpose_of_use
    ]
    explained = sum(
        1 for e in clinical if by_id[e.actor.id].index in by_mrn[e.patient.id].care_team
    )
    assert explained / len(clinical) > 0.98
    assert explained < len(clinical), "a few curious accesses outside the care team"


def test_codes_follow_the_standards(events: list[AccessEvent]) -> None:
    kinds = collections.Counter(
        (e.event_type.system, e.event_type.code, _subtype(e)) for e in events
    )
    rest = "http://terminology.hl7.org/CodeSystem/audit-event-type"
    for sub in ("read", "create", "update", "delete", "search-type"):
        assert kinds[rest, "rest", sub] > 0, sub
    assert kinds[DCM, "110114", "110122"] > 0  # login
    assert kinds[DCM, "110114", "110123"] > 0  # logout
    assert kinds[DCM, "110106", "disclose"] > 0  # export / disclosure
    assert kinds[DCM, "110106", "print"] > 0
    assert kinds[DCM, "110103", None] > 0  # imaging
    purposes = collections.Counter(p for e in events for p in e.purpose_of_use)
    assert {"TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH"} <= set(purposes)
    assert purposes.most_common(1)[0][0] == "TREAT"
    sources = collections.Counter(e.source.system.split(".")[0] for e in events)
    assert {"ehr", "pacs", "lis", "rx", "sso"} <= set(sources)
    assert all(1 <= e.source.type <= 9 for e in events)


def test_searches_carry_a_base64_query(events: list[AccessEvent]) -> None:
    searches = [e for e in events if _subtype(e) == "search-type"]
    assert searches
    for e in searches:
        assert e.action == "E" and e.query is not None
        assert base64.b64decode(e.query, validate=True).decode().startswith("GET /fhir/")
    # a researcher's cohort search fans out to several patients sharing a correlation id
    fan_out = collections.Counter(
        e.correlation_id for e in searches if "HRESCH" in e.purpose_of_use
    )
    assert max(fan_out.values()) >= 3


def test_logins_and_logouts_form_sessions(events: list[AccessEvent]) -> None:
    logins = {}
    for e in events:
        if e.event_type.code != "110114":
            continue
        assert e.patient == NO_PATIENT and e.action == "E"
        if _subtype(e) == "110122" and e.outcome == 0:
            assert e.session_ref
            logins[e.session_ref] = e
        elif _subtype(e) == "110123":
            login = logins[e.session_ref]  # type: ignore[index]
            assert login.actor == e.actor and login.occurred_at <= e.occurred_at
    failed = [e for e in events if e.event_type.code == "110114" and e.outcome == 4]
    assert failed and all(e.outcome_desc for e in failed)
    # accesses in a session come from the logged-in actor at the same workstation
    for e in events[:3_000]:
        if e.session_ref in logins:
            assert e.actor == logins[e.session_ref].actor
            assert e.client == logins[e.session_ref].client


def test_break_the_glass_starts_before_it_stops(events: list[AccessEvent]) -> None:
    started: dict[tuple[str, str | None, str], str] = {}
    stopped = 0
    emergency_reads = 0
    for e in events:
        key = (e.actor.id, e.session_ref, e.patient.id)
        if e.event_type.code == "110113" and _subtype(e) == "110127":
            assert e.purpose_of_use == ("ETREAT",)
            started[key] = e.occurred_at
        elif e.event_type.code == "110113" and _subtype(e) == "110138":
            assert key in started, "override stopped without being started"
            assert started[key] <= e.occurred_at
            stopped += 1
        elif "ETREAT" in e.purpose_of_use:
            assert key in started, "emergency access outside an override"
            emergency_reads += 1
    assert started and stopped and emergency_reads >= len(started)


def test_failures_are_occasional(events: list[AccessEvent]) -> None:
    outcomes = collections.Counter(e.outcome for e in events)
    assert outcomes[4] > 0 and outcomes[8] > 0
    assert (outcomes[4] + outcomes[8]) / len(events) < 0.05
    assert all(e.outcome_desc for e in events if e.outcome)
    # restricted records are where most serious denials happen
    denied = [e for e in events if e.outcome == 8 and e.event_type.code != "110114"]
    assert sum(1 for e in denied if e.sensitivity) > len(denied) / 2


def test_some_records_are_sensitive(model: HospitalModel, events: list[AccessEvent]) -> None:
    labelled = [e for e in events if e.sensitivity is not None]
    assert 0.02 < len(labelled) / len(events) < 0.4
    assert {e.sensitivity.confidentiality for e in labelled} <= {"R", "V"}  # type: ignore[union-attr]
    labels = {label for e in labelled for label in e.sensitivity.labels}  # type: ignore[union-attr]
    assert {"PSY", "HIV"} <= labels
    for p in model.patients:
        if p.department == "PSY":
            assert p.sensitivity is not None and "PSY" in p.sensitivity.labels


def test_fewer_events_at_night_than_by_day() -> None:
    small = HospitalModel(staff=60, patients=500, seed=3)
    sample = list(simulate(small, SAMPLE, seed=3))
    assert sample[-1].occurred_at[:10] >= "2026-11-03", "the sample spans more than a day"
    by_hour = collections.Counter(int(e.occurred_at[11:13]) for e in sample)
    night = sum(by_hour[h] for h in range(0, 5))
    day = sum(by_hour[h] for h in range(9, 14))
    assert day > 3 * night > 0


def test_clients_are_plausible_per_workstation(events: list[AccessEvent]) -> None:
    addresses: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        assert e.client is not None and e.client.address_type == "ip"
        assert e.client.address.startswith("10.")
        if e.client.workstation:
            addresses[e.client.workstation].add(e.client.address)
    assert all(len(a) == 1 for a in addresses.values()), "one address per workstation"
    assert any(e.client.workstation is None for e in events), "some remote (VPN) sessions"  # type: ignore[union-attr]


def test_one_patient_is_keyed_consistently(events: list[AccessEvent]) -> None:
    keys: dict[str, set[bytes]] = collections.defaultdict(set)
    patients: dict[str, set[object]] = collections.defaultdict(set)
    for e in events:
        keys[e.patient.id].add(partition_key(e))
        patients[e.patient.id].add(e.patient)
    assert all(k == {pid.encode()} for pid, k in keys.items())
    assert all(len(p) == 1 for p in patients.values())
    assert len(keys) > 500, "traffic is spread over many patients (and partitions)"


def test_generation_is_fast(model: HospitalModel) -> None:
    # >= 20k events/s is the target on a free core; the bound here is loose so a busy CI
    # machine does not make it flaky, while a pathological slowdown still fails
    started = time.perf_counter()
    n = sum(1 for _ in simulate(model, SAMPLE, seed=11))
    elapsed = time.perf_counter() - started
    assert n == SAMPLE
    assert SAMPLE / elapsed > 5_000, f"{SAMPLE / elapsed:,.0f} events/s"


def test_simulate_command_writes_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "events.jsonl"
    argv = [
        "simulate",
        "--count",
        "300",
        "--seed",
        "5",
        "--staff",
        "60",
        "--patients",
        "200",
        "--start",
        "2026-12-24",
        "--output",
        str(out),
    ]
    assert cli_main(argv) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 300
    first = decode_event(lines[0])
    assert first.occurred_at.startswith("2026-12-24")
    small = HospitalModel(staff=60, patients=200, seed=5)
    assert lines == _canonical(list(simulate(small, 300, 5, parse_start("2026-12-24"))))
    assert "wrote 300 events" in capsys.readouterr().err
