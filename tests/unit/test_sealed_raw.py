"""Sealed raw records (ADR 0037, ``careledger.sealed_raw``): the gateway's received bytes
under a record key made of the data keys of every patient they name; the processor's
two steps (``processors.sealing.RawSealer``) and verify's checks
(``verifiers.integrity.sealed.check_raw_row``), on a real SoftHSM2 token."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from careledger.ingest_keys import IngestKey, seal_raw_for_ingest
from careledger.keystore import KeyStore, local_token
from careledger.raw_record import build_envelope
from careledger.sealed_raw import (
    RAW_KEY_SYSTEM,
    SealedRawDocument,
    check_payload,
    check_raw_opening,
    decode_sealed_raw,
    join_key_ids,
    open_raw,
    open_raw_transit,
    raw_commitment,
    raw_key,
    raw_payload,
    seal_raw,
    sealed_raw_document,
    split_key_ids,
)
from careledger.storage.kinds import SEALED_RAW, SealedRaw
from careledger.storage.store import event_rows
from careledger_core.errors import CareledgerError
from careledger_core.hashing import leaf_hash
from careledger_core.sealing import SealError
from processors.sealing import RawSealer, SubjectKeys
from tests.softhsm import softhsm_dir
from tests.unit.test_batch_chaining import chain_for, gate_for, sealed, take
from verifiers.integrity.sealed import SealedReport, check_raw_row

INGEST = PrivateKey(bytes(range(7, 39)))
KEY = IngestKey(bytes(INGEST.public_key), bytes(INGEST))
SALT = bytes(range(50, 82))
K1, K2, K3 = [(bytes([n]) * 16, bytes(range(n, n + 32))) for n in (1, 2, 3)]
SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
ALICE, BOB = (SYSTEM, "MRN-000123"), (SYSTEM, "MRN-000456")
#: what a Bundle of two patients' AuditEvents looks like to the gateway
BODY = b'{"resourceType":"Bundle","entry":[{"patient":"MRN-000123"},{"patient":"MRN-000456"}]}'


def _envelope(data: bytes = BODY, **over: Any) -> bytes:
    args: dict[str, Any] = {
        "record_id": str(uuid.UUID(int=7)),
        "data": data,
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "fhir-r4-bundle",
        "received_at": "2026-12-06T03:50:00.000000Z",
        "transport": {"protocol": "https", "peer": "10.1.2.3", "source_id": "ehr-main"},
    }
    args.update(over)
    return build_envelope(**args)[1]


def _document(payload: bytes, salt: bytes = SALT) -> bytes:
    return sealed_raw_document(check_payload(payload).envelope, raw_commitment(salt, payload))


@pytest.fixture
def keystore() -> Iterator[KeyStore]:
    store = KeyStore(local_token(softhsm_dir(), f"w{uuid.uuid4().hex[:12]}"), create=True)
    yield store
    store.close()


# --------------------------------------------------------------------------- the format


def test_a_sealed_raw_record_opens_to_its_envelope_with_the_key_of_all_its_patients() -> None:
    envelope = _envelope()
    payload = raw_payload(envelope, [BOB, ALICE, ALICE])
    document = _document(payload)
    key = raw_key(str(uuid.UUID(int=7)), [K1, K2])
    opened = open_raw(key, document, seal_raw(key, document, SALT, payload))
    assert opened.envelope_bytes == envelope
    assert opened.subjects == [ALICE, BOB]  # sorted, once each
    assert opened.envelope.raw_bytes() == BODY


def test_the_document_names_no_one_and_carries_no_received_byte() -> None:
    envelope = _envelope()
    document = _document(raw_payload(envelope, [ALICE, BOB]))
    for secret in (b"MRN-000123", b"MRN-000456", b"10.1.2.3", base64.b64encode(BODY)[:20]):
        assert secret not in document
    parsed, _ = decode_sealed_raw(document)
    assert (parsed.format, parsed.source_id, parsed.protocol) == (
        "fhir-r4-bundle",
        "ehr-main",
        "https",
    )


@pytest.mark.parametrize("field", ["data", "transport", "patients", "peer"])
def test_a_document_carrying_the_bytes_or_whom_they_name_is_refused(field: str) -> None:
    envelope = _envelope()
    document = _document(raw_payload(envelope, [ALICE]))
    hostile = document[:-1] + b',"' + field.encode() + b'":"MRN-000123"}'
    with pytest.raises(CareledgerError):
        decode_sealed_raw(hostile)


def test_the_record_key_needs_every_patients_key() -> None:
    record = str(uuid.UUID(int=7))
    both = raw_key(record, [K1, K2])
    assert raw_key(record, [K2, K1]) == both  # the order of the keys does not matter
    assert raw_key(record, [K1]) != both  # one patient's key is not enough
    assert raw_key(record, [K1, K3]) != both
    assert raw_key(str(uuid.UUID(int=8)), [K1, K2]) != both  # bound to the record


def test_erasing_any_patient_of_a_shared_record_makes_it_unopenable() -> None:
    envelope = _envelope()
    payload = raw_payload(envelope, [ALICE, BOB])
    document = _document(payload)
    part = seal_raw(raw_key(str(uuid.UUID(int=7)), [K1, K2]), document, SALT, payload)
    for survivors in ([K1], [K2], [K1, K3]):  # what is left after an erasure
        with pytest.raises(SealError):
            open_raw(raw_key(str(uuid.UUID(int=7)), survivors), document, part)


def test_a_part_moved_to_another_records_document_does_not_open() -> None:
    envelope = _envelope()
    payload = raw_payload(envelope, [ALICE])
    key = raw_key(str(uuid.UUID(int=7)), [K1])
    document = _document(payload)
    other = _document(payload, salt=bytes(32))
    with pytest.raises(SealError):
        open_raw(key, other, seal_raw(key, document, SALT, payload))


def test_an_opening_whose_envelope_differs_from_the_document_is_refused() -> None:
    envelope = _envelope()
    payload = raw_payload(envelope, [ALICE])
    document = _document(payload)
    forged = raw_payload(_envelope(data=b"{}"), [ALICE])  # other bytes, same record id
    with pytest.raises(SealError) as caught:
        check_raw_opening(document, SALT, forged)
    assert caught.value.code == "COMMITMENT_MISMATCH"


@given(st.data())
def test_any_flipped_byte_of_a_sealed_raw_part_does_not_open(data: st.DataObject) -> None:
    envelope = _envelope()
    payload = raw_payload(envelope, [ALICE])
    key = raw_key(str(uuid.UUID(int=7)), [K1])
    document = _document(payload)
    part = bytearray(seal_raw(key, document, SALT, payload))
    i = data.draw(st.integers(0, len(part) - 1))
    part[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealError):
        open_raw(key, document, bytes(part))


def test_a_transit_record_opens_with_the_ingest_key_only() -> None:
    envelope = _envelope()
    transit = seal_raw_for_ingest(KEY.public, envelope, [ALICE])
    assert b"MRN-000123" not in transit and b"10.1.2.3" not in transit
    assert open_raw_transit(KEY.private, transit).envelope_bytes == envelope
    with pytest.raises(SealError) as caught:
        open_raw_transit(bytes(PrivateKey.generate()), transit)
    assert caught.value.code == "SEALED_UNOPENED"


def test_key_id_columns_round_trip_and_refuse_anything_else() -> None:
    column = join_key_ids([K2[0], K1[0], K1[0]])
    assert split_key_ids(column) == [K1[0], K2[0]]
    for bad in ("", "zz", f"{K2[0].hex()},{K1[0].hex()}", f"{K1[0].hex()},{K1[0].hex()}"):
        with pytest.raises(ValueError):
            split_key_ids(bad)


# --------------------------------------------------------------------------- the processor


def _chain(keystore: KeyStore) -> tuple[Any, RawSealer]:
    gate = gate_for()
    sealer = RawSealer(KEY, SubjectKeys(keystore), salt=lambda n: SALT[:n])
    gate.raw_sealer = sealer
    return chain_for(gate, kind=SEALED_RAW), sealer


def test_a_raw_record_is_chained_sealed_under_its_patients_keys(keystore: KeyStore) -> None:
    chain, sealer = _chain(keystore)
    envelope = _envelope()
    assert take(chain, seal_raw_for_ingest(KEY.public, envelope, [ALICE, BOB])) == []
    block = sealed(chain)
    with pytest.raises(RuntimeError, match="not sealed"):
        event_rows([block], SEALED_RAW)  # never written before its keys were used
    assert sealer.complete([block]) == 1
    assert sealer.complete([block]) == 0
    row = event_rows([block], SEALED_RAW)[0]
    raw: SealedRaw = block.events[0].event  # type: ignore[assignment]
    keys = [keystore.data_key(keystore.lookup(*p), "t") for p in (ALICE, BOB)]
    assert all(k is not None for k in keys)
    pairs = [(k.key_id, k.key) for k in keys if k is not None]
    assert raw.data_key_id == join_key_ids(i for i, _ in pairs)
    opened = open_raw(
        raw_key(raw.record_id, pairs), block.events[0].canonical, base64.b64decode(raw.sealed)
    )
    assert opened.envelope_bytes == envelope
    for secret in ("MRN-000123", "MRN-000456", "10.1.2.3"):
        assert secret not in repr(row)


def test_a_record_naming_no_patient_is_under_its_senders_day(keystore: KeyStore) -> None:
    chain, sealer = _chain(keystore)
    take(chain, seal_raw_for_ingest(KEY.public, _envelope(data=b"<login/>"), []))
    block = sealed(chain)
    sealer.complete([block])
    day = keystore.data_key(keystore.lookup(RAW_KEY_SYSTEM, "ehr-main/2026-12-06"), "t")
    assert day is not None
    assert block.events[0].event.data_key_id == day.key_id.hex()  # type: ignore[union-attr]


def test_a_raw_record_in_clear_is_refused_on_a_sealed_ledger(keystore: KeyStore) -> None:
    chain, _ = _chain(keystore)
    envelope = _envelope()
    rejected = take(chain, envelope)
    assert [(r.code, r.value) for r in rejected] == [("RAW_NOT_SEALED", envelope)]
    assert chain.pending == []


def test_a_hostile_transit_record_is_dead_lettered_with_its_reason(keystore: KeyStore) -> None:
    chain, _ = _chain(keystore)
    stranger = seal_raw_for_ingest(bytes(PrivateKey.generate().public_key), _envelope(), [ALICE])
    assert [r.code for r in take(chain, stranger)] == ["SEALED_UNOPENED"]
    garbage = b"careledger.sealed-raw-transit/1\n" + b"\x00" * 10
    assert [r.code for r in take(chain, garbage)] == ["SEALED_UNOPENED"]


# --------------------------------------------------------------------------- verify


def _row(
    keystore: KeyStore, named: list[tuple[str, str]], sealed_under: list[tuple[str, str]]
) -> tuple[Any, ...]:
    """A stored raw row whose payload names ``named`` and is sealed under the keys of
    ``sealed_under`` (what an operator holding the processor's keys could write)."""
    envelope = _envelope()
    payload = raw_payload(envelope, named)
    document = _document(payload)
    keys = [keystore.data_key(keystore.lookup(*p), "t", create=True) for p in sealed_under]
    pairs = [(k.key_id, k.key) for k in keys if k is not None]
    part = seal_raw(raw_key(str(uuid.UUID(int=7)), pairs), document, SALT, payload)
    return (
        0,
        0,
        str(uuid.UUID(int=7)).encode(),
        document,
        leaf_hash(document).hex().encode(),
        join_key_ids(i for i, _ in pairs).encode(),
        base64.b64encode(part),
    )


def _check(
    keystore: KeyStore, row: tuple[Any, ...], erased: frozenset[str] = frozenset()
) -> SealedReport:
    report = SealedReport()
    ids = split_key_ids(row[5].decode())
    keys = keystore.keys_by_id(ids, "verify")
    check_raw_row(report, keystore, keys, "local/raw/0", row, erased)
    return report


def test_verify_opens_a_raw_record_and_remembers_its_keys(keystore: KeyStore) -> None:
    row = _row(keystore, [ALICE, BOB], [ALICE, BOB])
    report = _check(keystore, row)
    assert (report.raw_opened, report.findings) == (1, [])
    assert report.raw_keys[hashlib.sha256(BODY).hexdigest()] == set(row[5].decode().split(","))


def test_a_raw_record_sealed_under_fewer_patients_than_it_names_is_found(
    keystore: KeyStore,
) -> None:
    # erasing Bob would leave his bytes readable under Alice's key
    report = _check(keystore, _row(keystore, [ALICE, BOB], [ALICE]))
    assert [f.code.value for f in report.findings] == ["SEALED_KEY_NOT_PATIENTS"]


def test_an_edited_sealed_column_is_found(keystore: KeyStore) -> None:
    row = list(_row(keystore, [ALICE], [ALICE]))
    part = bytearray(base64.b64decode(row[6]))
    part[-1] ^= 1
    row[6] = base64.b64encode(bytes(part))
    report = _check(keystore, tuple(row))
    assert [f.code.value for f in report.findings] == ["SEALED_PART_INVALID"]


def test_a_raw_record_whose_key_was_erased_is_erased_and_one_deleted_otherwise_is_missing(
    keystore: KeyStore,
) -> None:
    row = _row(keystore, [ALICE, BOB], [ALICE, BOB])
    bob = keystore.data_key(keystore.lookup(*BOB), "t")
    assert bob is not None
    keystore.destroy(keystore.lookup(*BOB))
    report = _check(keystore, row, frozenset({bob.key_id.hex()}))
    assert (report.raw_erased, report.raw_opened, report.findings) == (1, 0, [])
    report = _check(keystore, row)  # no ledgered erasure destroyed it
    assert [f.code.value for f in report.findings] == ["SEALED_KEY_MISSING"]


def test_sealed_raw_document_values_are_what_the_table_holds() -> None:
    envelope = _envelope()
    document = _document(raw_payload(envelope, [ALICE]))
    parsed: SealedRawDocument = decode_sealed_raw(document)[0]
    values = SEALED_RAW.values(parsed)  # a replica's row: no sealed part, no key ids
    assert values[-2:] == ("", "")
    assert values[0] == parsed.record_id


# --------------------------------------------------------------------------- expiry


class _Backend:
    """What ``newest_records`` reads: each table's newest time per ``data_key_id``."""

    def __init__(self, tables: dict[str, list[tuple[bytes, bytes]]]) -> None:
        self.tables = tables

    def execute(self, sql: str, params: Any = None) -> list[tuple[bytes, bytes]]:
        table = sql.split(" FROM careledger.")[1].split()[0]
        return self.tables[table]


def test_a_raw_record_counts_for_the_expiry_of_every_key_it_lists() -> None:
    from careledger.expiry import newest_records

    a, b, day = "a" * 32, "b" * 32, "d" * 32
    backend = _Backend(
        {
            "access_events": [(a.encode(), b"2020-01-01T00:00:00.000000Z")],
            "reference_records": [],
            "raw_records": [
                (f"{a},{b}".encode(), b"2021-01-01T00:00:00.000000Z"),  # names A and B
                (day.encode(), b"2019-05-05T00:00:00.000000Z"),  # a sender's day
            ],
        }
    )
    newest = newest_records(backend, "careledger")  # type: ignore[arg-type]
    assert newest == {
        a: "2021-01-01T00:00:00.000000Z",  # the shared record is newer than A's access
        b: "2021-01-01T00:00:00.000000Z",
        day: "2019-05-05T00:00:00.000000Z",
    }


# ------------------------------------------------------------ events made from a raw record


def _event_row(
    keystore: KeyStore, raw_sha256: str, *, about_a_patient: bool = True
) -> tuple[tuple[Any, ...], str]:
    """A stored sealed event made from the raw record ``raw_sha256`` (as the processor
    writes it), and its data key id."""
    import msgspec

    from careledger.ingest_keys import IngestSealer
    from careledger.storage.store import BatchInfo
    from careledger_core.event import RawRef
    from processors.sealing import EventOpener
    from producers.simulator import HospitalModel, simulate

    simulated = simulate(HospitalModel(staff=10, patients=5, seed=9), 50, seed=9)
    event = next(e for e in simulated if (e.patient.id != "-") is about_a_patient)
    event = msgspec.structs.replace(
        event, raw_ref=RawRef(format="fhir-r4-bundle", sha256=raw_sha256)
    )
    sealer = IngestSealer(KEY.public)
    document, box = sealer.seal(event)
    opener = EventOpener(KEY, keystore)
    info = BatchInfo(None, "", ())  # type: ignore[arg-type]
    chained, refused = opener.open_batch(
        info, 0, [document], [leaf_hash(document)], [box], sealer.public, 65536
    )
    assert refused == [] and len(chained) == 1
    record = chained[0].event
    row = (
        0,
        0,
        event.event_id.encode(),
        document,
        leaf_hash(document).hex().encode(),
        record.patient_ref.encode(),  # type: ignore[union-attr]
        record.actor_ref.encode(),  # type: ignore[union-attr]
        record.data_key_id.encode(),  # type: ignore[union-attr]
        record.sealed.encode(),  # type: ignore[union-attr]
    )
    return row, record.data_key_id  # type: ignore[union-attr]


def test_an_event_whose_patient_is_not_among_its_raw_records_keys_is_found(
    keystore: KeyStore,
) -> None:
    # an operator holding the processor's key seals a Bundle under the key of one of its
    # patients only: erasing another patient whose event was made from it would leave
    # the bytes readable. The raw record alone looks right (it names whom it was sealed
    # for); its events give it away.
    from verifiers.integrity.sealed import _check_row

    sha = hashlib.sha256(BODY).hexdigest()
    row, key_id = _event_row(keystore, sha)
    keys = keystore.keys_by_id([bytes.fromhex(key_id)], "verify")
    honest = SealedReport(raw_keys={sha: {key_id}})
    _check_row(honest, keystore, keys, "local/events/0", row, frozenset())
    assert (honest.opened, honest.findings) == (1, [])
    forged = SealedReport(raw_keys={sha: {"ab" * 16}})
    _check_row(forged, keystore, keys, "local/events/0", row, frozenset())
    assert [f.code.value for f in forged.findings] == ["SEALED_KEY_NOT_PATIENTS"]
    assert forged.opened == 0
    # an event of a raw record verify could not open (erased, or not on this ledger) is
    # not judged by it (nor is an event about no patient, which no erasure concerns)
    alone = SealedReport()
    _check_row(alone, keystore, keys, "local/events/0", row, frozenset())
    assert (alone.opened, alone.findings) == (1, [])


def test_an_event_about_no_patient_made_from_a_raw_record_is_not_judged_by_its_keys(
    keystore: KeyStore,
) -> None:
    # the decision point's event refers to its decision record (which names the patient
    # asked about) but is about no patient: no erasure concerns it
    from verifiers.integrity.sealed import _check_row

    sha = hashlib.sha256(BODY).hexdigest()
    row, key_id = _event_row(keystore, sha, about_a_patient=False)
    keys = keystore.keys_by_id([bytes.fromhex(key_id)], "verify")
    report = SealedReport(raw_keys={sha: {"ab" * 16}})
    _check_row(report, keystore, keys, "local/events/0", row, frozenset())
    assert (report.opened, report.findings) == (1, [])


# --------------------------------------------------------------------------- the gateway


def test_the_gateway_names_the_patients_of_a_record_and_not_the_no_patient_id() -> None:
    # a record that names no patient (a login) must go under its sender's day's key, not
    # under a key shared by every "-" event that would never expire
    import msgspec

    from careledger_core.event import Patient
    from careledger_core.reference import canonical_reference_bytes
    from producers.gateway.publisher import Job, raw_subjects_of
    from producers.simulator import HospitalModel, simulate

    model = HospitalModel(staff=10, patients=5, seed=9)
    simulated = list(simulate(model, 50, seed=9))
    someone = next(e for e in simulated if e.patient.id != "-")
    nobody = msgspec.structs.replace(someone, patient=Patient(id="-"))
    consent = next(r for r in model.reference_records() if r.kind == "consent")
    job = Job(
        events=[someone, nobody],
        references=[("consents", b"", canonical_reference_bytes(consent))],
    )
    assert raw_subjects_of(job, SYSTEM) == {
        (someone.patient.system or "", someone.patient.id),
        (SYSTEM, consent.subject_id),
    }
    assert raw_subjects_of(Job(events=[nobody]), SYSTEM) == set()


# ------------------------------------------------------------------ events about no patient


def _no_patient_event(source: str, recorded_at: str) -> Any:
    import msgspec

    from producers.simulator import HospitalModel, simulate

    simulated = simulate(HospitalModel(staff=10, patients=5, seed=9), 50, seed=9)
    event = next(e for e in simulated if e.patient.id == "-")
    return msgspec.structs.replace(
        event,
        source=msgspec.structs.replace(event.source, system=source),
        recorded_at=recorded_at,
        occurred_at=recorded_at,
    )


def test_events_about_no_patient_are_sealed_under_their_sources_day(
    keystore: KeyStore,
) -> None:
    # logins, console views and decisions are about no patient: under one key shared by
    # all of them, a steady flow of logins would keep that key (and every such event
    # since the first) alive for ever; under their source's day, each day expires
    from careledger.ingest_keys import IngestSealer
    from careledger.storage.store import BatchInfo
    from careledger_core.sealed_event import NO_PATIENT_KEY_SYSTEM, key_subject
    from processors.sealing import EventOpener

    events = [
        _no_patient_event("ehr-main", "2026-12-05T23:59:59.000000Z"),
        _no_patient_event("ehr-main", "2026-12-06T00:00:00.000000Z"),
        _no_patient_event("pacs", "2026-12-06T08:00:00.000000Z"),
        _no_patient_event("ehr-main", "2026-12-06T17:00:00.000000Z"),
    ]
    assert key_subject(events[2]) == (NO_PATIENT_KEY_SYSTEM, "pacs/2026-12-06")
    sealer = IngestSealer(KEY.public)
    pairs = [sealer.seal(e) for e in events]
    opener = EventOpener(KEY, keystore)
    chained, refused = opener.open_batch(
        BatchInfo(None, "", ()),  # type: ignore[arg-type]
        0,
        [d for d, _ in pairs],
        [leaf_hash(d) for d, _ in pairs],
        [b for _, b in pairs],
        sealer.public,
        65536,
    )
    assert refused == []
    key_ids = [c.event.data_key_id for c in chained]  # type: ignore[union-attr]
    assert len(set(key_ids[:3])) == 3 and key_ids[3] == key_ids[1]
    for event, key_id in zip(events, key_ids, strict=True):
        day = keystore.data_key(
            keystore.lookup(
                NO_PATIENT_KEY_SYSTEM, f"{event.source.system}/{event.recorded_at[:10]}"
            ),
            "test",
        )
        assert day is not None and day.key_id.hex() == key_id
    # none of them is under the "-" pseudo-patient's key
    assert keystore.data_key(keystore.lookup(events[0].patient.system or "", "-"), "t") is None


def test_an_event_about_no_patient_sealed_under_a_shared_key_is_found(
    keystore: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an operator's processor that seals every login under one key (so that they never
    # expire) is caught by verify, which recomputes whose key it must be
    import careledger_core.sealed_event
    from verifiers.integrity.sealed import _check_row

    # the processor's opening (careledger_core.sealed_event.open_ingest_batch) asks
    # whose key seals the event; verify's own binding of the function is left alone
    monkeypatch.setattr(
        careledger_core.sealed_event, "key_subject", lambda e: ("urn:careledger:no-patient", "-")
    )
    row, key_id = _event_row(keystore, hashlib.sha256(BODY).hexdigest(), about_a_patient=False)
    keys = keystore.keys_by_id([bytes.fromhex(key_id)], "verify")
    forged = SealedReport()
    _check_row(forged, keystore, keys, "local/events/0", row, frozenset())
    assert [f.code.value for f in forged.findings] == ["SEALED_KEY_NOT_PATIENTS"]
    monkeypatch.undo()
    row, key_id = _event_row(keystore, hashlib.sha256(BODY).hexdigest(), about_a_patient=False)
    keys = keystore.keys_by_id([bytes.fromhex(key_id)], "verify")
    honest = SealedReport()
    _check_row(honest, keystore, keys, "local/events/0", row, frozenset())
    assert (honest.opened, honest.findings) == (1, [])
