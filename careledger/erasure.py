"""Crypto-shredding a patient on a sealed ledger, under the retention policies and the
legal holds (ADR 0037). ``careledger erase`` and ``careledger legal-hold`` are the
commands; this is what they do.

:func:`erase`:

1. finds the patient's data keys through the key store (their lookup) and the patient's
   pseudonyms (one per key);
2. reads what the ledger says of them: when their first access was chained (the
   records' creation, which the retention duty counts from) and the legal holds placed
   on them (registrar-signed ``legal-hold`` records; an unsigned one is ignored and
   named);
3. decides with the policy table (:func:`careledger.retention.decide_request`), the
   strictest policy winning; a refusal is ledgered as an ``erasure`` record of outcome
   ``refused`` and destroys nothing;
4. ledgers the ``erasure`` record (signed by the registrar key, naming the pseudonym and
   the key ids, never the patient) and waits for Kafka's acknowledgement;
5. destroys the key rows on every ClickHouse server, and waits out the processors' key
   cache (``sealing_key_cache_s``) so that no event is sealed under a destroyed key
   after this returns (a processor with a longer cache than this setting says could).

Afterwards every leaf, root, signature and proof is unchanged; ``verify`` counts the
patient's events as erased (the ledgered erasure names their keys); nothing can open
their sealed parts.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import load_public_keys, load_registrar_key
from careledger.keystore import Destruction, KeyStore
from careledger.retention import Hold, Policy, decide_request
from careledger.storage.backend import SqlBackend
from careledger_core.errors import CareledgerError
from careledger_core.reference import ReferenceRecord, decode_and_canonicalize_reference
from careledger_core.reference_privacy import ErasureBody, LegalHoldBody, signed_bytes
from careledger_core.sealing import patient_ref
from careledger_core.signing import PublicKey, SigningKey

__all__ = [
    "ErasureResult",
    "erase",
    "erased_key_ids",
    "erasures_of",
    "legal_holds",
    "place_hold",
    "signed_privacy_record",
]

#: waited after the processors' data key cache (``sealing_key_cache_s``)
CACHE_MARGIN_S: Final = 2.0
_TS: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime(_TS)


def _when(ts: str) -> dt.datetime:
    return dt.datetime.strptime(ts, _TS).replace(tzinfo=dt.UTC)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def signed_privacy_record(
    registrar: SigningKey,
    kind: str,
    record_id: str,
    body: dict[str, Any],
    *,
    version: int = 1,
    at: str | None = None,
) -> ReferenceRecord:
    """An ``erasure`` or ``legal-hold`` reference record signed by the registrar."""
    signature = registrar.sign(signed_bytes(kind, body))
    at = at or _now()
    return ReferenceRecord(
        kind=kind,  # type: ignore[arg-type]
        record_id=record_id,
        version=version,
        recorded_at=at,
        effective_at=at,
        body={**body, "signature": base64.b64encode(signature).decode()},
    )


def _verified(rec: ReferenceRecord, registrars: Sequence[PublicKey]) -> bool:
    body = rec.parsed
    if not isinstance(body, ErasureBody | LegalHoldBody):
        return False
    try:
        signature = base64.b64decode(body.signature, validate=True)
    except ValueError:
        return False
    message = signed_bytes(rec.kind, rec.body)
    for key in registrars:
        try:
            key.verify(message, signature)
        except CareledgerError:
            continue
        return True
    return False


def _privacy_records(
    backend: SqlBackend, db: str, kind: str, refs: Sequence[str] | None
) -> list[ReferenceRecord]:
    where = "" if refs is None else " AND subject_id IN %(refs)s"
    rows = backend.execute(
        f"SELECT canonical FROM {db}.reference_records WHERE kind = %(k)s{where} AND "
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)",
        {"k": kind, **({} if refs is None else {"refs": tuple(refs)})},
    )
    out = []
    for (canonical,) in rows:
        try:
            rec, _ = decode_and_canonicalize_reference(bytes(canonical))
        except (CareledgerError, TypeError):
            continue  # the chain checks report a record that does not decode
        out.append(rec)
    return out


def erased_key_ids(
    backend: SqlBackend, db: str, registrars: Sequence[PublicKey]
) -> tuple[frozenset[str], int]:
    """The data key ids committed, registrar-signed erasures destroyed; and how many
    erasure records were not honoured (no trusted signature)."""
    out: set[str] = set()
    unsigned = 0
    for rec in _privacy_records(backend, db, "erasure", None):
        if not _verified(rec, registrars):
            unsigned += 1
            continue
        assert isinstance(rec.parsed, ErasureBody)
        out.update(rec.parsed.key_ids)
    return frozenset(out), unsigned


def erasures_of(
    backend: SqlBackend, db: str, lookup: bytes, registrars: Sequence[PublicKey]
) -> list[dict[str, Any]]:
    """The committed, registrar-signed erasures of the patient of ``lookup`` that
    destroyed keys: record id, when, reason, requester, policy and key ids."""
    out = []
    for rec in _privacy_records(backend, db, "erasure", None):
        body = rec.parsed
        if (
            isinstance(body, ErasureBody)
            and body.lookup == lookup.hex()
            and body.outcome == "erased"
            and _verified(rec, registrars)
        ):
            out.append(
                {
                    "record_id": rec.record_id,
                    "erased_at": rec.recorded_at,
                    "reason": body.reason,
                    "requested_by": body.requested_by,
                    "policy": body.policy,
                    "key_ids": body.key_ids,
                }
            )
    return out


def legal_holds(
    backend: SqlBackend, db: str, refs: Sequence[str], registrars: Sequence[PublicKey]
) -> tuple[list[Hold], list[str]]:
    """The legal holds on these pseudonyms (each hold's versions in order: placed, then
    lifted), and the ids of hold records ignored for want of a trusted signature."""
    by_id: dict[str, list[ReferenceRecord]] = {}
    ignored: list[str] = []
    for rec in _privacy_records(backend, db, "legal-hold", refs):
        if not _verified(rec, registrars):
            ignored.append(rec.record_id)
            continue
        by_id.setdefault(rec.record_id, []).append(rec)
    holds = []
    for hold_id, versions in sorted(by_id.items()):
        versions.sort(key=lambda r: r.version)
        placed = next((r for r in versions if _status(r) == "active"), None)
        if placed is None:
            continue
        lifted = next(
            (r for r in versions if r.version > placed.version and _status(r) == "lifted"),
            None,
        )
        body = placed.parsed
        assert isinstance(body, LegalHoldBody)
        holds.append(
            Hold(
                hold_id,
                _when(placed.effective_at),
                None if lifted is None else _when(lifted.effective_at),
                body.reason,
            )
        )
    return holds, ignored


def _status(rec: ReferenceRecord) -> str:
    body = rec.parsed
    return body.status if isinstance(body, LegalHoldBody) else ""


def first_access(backend: SqlBackend, db: str, refs: Sequence[str]) -> dt.datetime | None:
    """When the patient's first committed access happened (the records' creation)."""
    rows = backend.execute(
        f"SELECT min(occurred_at), count() FROM {db}.access_events WHERE patient_id IN %(r)s "
        f"AND (chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash "
        f"FROM {db}.blocks)",
        {"r": tuple(refs)},
    )
    if not rows or not int(rows[0][1]):
        return None
    return _when(_text(rows[0][0]))


@dataclass
class ErasureResult:
    outcome: str  # "erased", "refused", "nothing" (no key: never seen, or erased before)
    decision: str
    record_id: str | None = None
    patient_ref: str | None = None
    key_ids: tuple[str, ...] = ()
    destruction: Destruction | None = None
    ignored_holds: list[str] = field(default_factory=list)


def erase(
    settings: Settings,
    keystore: KeyStore,
    backend: SqlBackend,
    *,
    system: str,
    patient_id: str,
    reason: str,
    policies: Sequence[Policy],
    requested_by: str,
    publish: Callable[[ReferenceRecord], None],
    now: dt.datetime | None = None,
) -> ErasureResult:
    """Erase one patient (see the module's steps). ``publish`` ledgers a reference
    record and returns once Kafka acknowledged it (raises otherwise: nothing is
    destroyed then)."""
    now = now or dt.datetime.now(dt.UTC)
    db = settings.clickhouse_database
    lookup = keystore.lookup(system, patient_id)
    keys = keystore.data_keys(lookup, "erase")
    if not keys:
        return ErasureResult(
            "nothing", "no data key for this patient: never seen, or erased before"
        )
    refs = [patient_ref(k.key) for k in keys]
    registrars = load_public_keys(settings.trusted_registrar_keys)
    holds, ignored = legal_holds(backend, db, refs, registrars)
    created = first_access(backend, db, refs) or now
    decision = decide_request(policies, created, now, holds)
    names = ", ".join(p.name for p in policies)
    body: dict[str, Any] = {
        "patient_ref": refs[0],
        "lookup": lookup.hex(),
        "outcome": "erased" if decision.allowed else "refused",
        "key_ids": [k.key_id.hex() for k in keys] if decision.allowed else [],
        "reason": reason,
        "policy": names,
        "decision": decision.reason,
        "requested_by": requested_by,
    }
    record_id = f"erasure-{uuid.uuid4()}"
    publish(signed_privacy_record(load_registrar_key(settings), "erasure", record_id, body))
    result = ErasureResult(
        body["outcome"],
        decision.reason,
        record_id,
        refs[0],
        tuple(body["key_ids"]),
        ignored_holds=ignored,
    )
    if not decision.allowed:
        return result
    result.destruction = keystore.destroy(lookup)
    time.sleep(settings.sealing_key_cache_s + CACHE_MARGIN_S)
    return result


def place_hold(
    settings: Settings,
    keystore: KeyStore,
    *,
    system: str,
    patient_id: str,
    reason: str,
    placed_by: str,
    publish: Callable[[ReferenceRecord], None],
    hold_id: str | None = None,
    lift: bool = False,
    version: int = 1,
) -> ReferenceRecord:
    """Ledger a legal hold on the patient (a new data key is made if they have none, so
    that the hold names the pseudonym their events will carry), or lift one."""
    lookup = keystore.lookup(system, patient_id)
    key = keystore.data_key(lookup, "legal-hold", create=True)
    assert key is not None
    body = {
        "patient_ref": patient_ref(key.key),
        "status": "lifted" if lift else "active",
        "reason": reason,
        "placed_by": placed_by,
    }
    record = signed_privacy_record(
        load_registrar_key(settings),
        "legal-hold",
        hold_id or f"hold-{uuid.uuid4()}",
        body,
        version=version,
    )
    publish(record)
    return record
