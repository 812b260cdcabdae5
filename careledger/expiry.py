"""Retention expiry on a sealed ledger (ADR 0037): ``careledger expire``, the job that
erases what the retention policies say has expired, run on a schedule (daily).

A subject's records (a patient's accesses and reference records, a staff member's
directory records, or a source's day of accesses about no patient:
``careledger_core.sealed_event.key_subject``) are sealed under their data keys. The job
walks every subject that holds keys, and for each:

1. finds when the newest committed record sealed under their keys was made (an
   access's ``occurred_at``, a reference record's ``recorded_at``, a raw record's
   ``received_at``: a raw record counts for every key it lists, so a sender's day of
   records that name no patient expires as a subject of its own): the subject's records
   expire together, when the *last* of them has, so nothing is shredded while a newer
   record still needs its retention. A subject whose keys seal no committed record is
   left alone (a key made for a record still being chained);
2. decides with :func:`careledger.retention.expired` (every retention duty over, the
   latest ``expire_years`` of the policies reached, no standing legal hold);
3. ledgers a registrar-signed ``erasure`` record (outcome ``erased``, reason
   ``retention-expiry``, the policies and their decision, naming pseudonyms and key ids,
   never the subject), then destroys the keys on every server, exactly as
   ``careledger erase`` does; after the last one it waits out the processors' key cache.

``--dry-run`` decides and ledgers nothing. The newest record times are read in three
grouped queries for all keys; holds are read only for the subjects that have expired.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.config import Settings
from careledger.erasure import CACHE_MARGIN_S, legal_holds, signed_privacy_record
from careledger.keys import load_public_keys, load_registrar_key
from careledger.keystore import Destruction, KeyStore
from careledger.retention import Policy, expired
from careledger.storage.backend import SqlBackend
from careledger.storage.migrations import check_identifier
from careledger_core.reference import ReferenceRecord
from careledger_core.sealing import patient_ref

__all__ = ["EXPIRY_REASON", "ExpiryRun", "expire", "newest_records"]

EXPIRY_REASON: Final = "retention-expiry"
_TS: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class ExpiryRun:
    """What one run of the job did (counts of subjects; never who)."""

    examined: int = 0
    expired: int = 0
    not_yet: int = 0
    held: int = 0
    unused: int = 0
    #: per expired subject: the erasure record's id, its key ids, the destruction
    erasures: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "expired": self.expired,
            "not_yet": self.not_yet,
            "held": self.held,
            "unused": self.unused,
            "erasures": self.erasures,
            "not_confirmed": self.incomplete,
        }


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def newest_records(backend: SqlBackend, database: str) -> dict[str, str]:
    """Per data key id: the time of the newest committed record sealed under it."""
    db = check_identifier(database)
    committed = (
        f"(chain_id, height, block_hash) IN (SELECT chain_id, height, block_hash FROM {db}.blocks)"
    )
    newest: dict[str, str] = {}
    for table, column in (
        ("access_events", "occurred_at"),
        ("reference_records", "recorded_at"),
        # a raw record lists the keys of every patient it names (or its sender's day's)
        ("raw_records", "received_at"),
    ):
        for key_ids, at in backend.execute(
            f"SELECT data_key_id, max({column}) FROM {db}.{table} "
            f"WHERE data_key_id != '' AND {committed} GROUP BY data_key_id"
        ):
            t = _text(at)
            for k in _text(key_ids).split(","):
                if t > newest.get(k, ""):
                    newest[k] = t
    return newest


def expire(
    settings: Settings,
    keystore: KeyStore,
    backend: SqlBackend,
    *,
    policies: Sequence[Policy],
    requested_by: str,
    publish: Callable[[ReferenceRecord], None],
    now: dt.datetime | None = None,
    dry_run: bool = False,
) -> ExpiryRun:
    """One run of the expiry job (module doc). ``publish`` ledgers a reference record
    and returns once Kafka acknowledged it (raises otherwise: nothing more is destroyed)."""
    now = now or dt.datetime.now(dt.UTC)
    db = settings.clickhouse_database
    registrars = load_public_keys(settings.trusted_registrar_keys)
    newest = newest_records(backend, db)
    names = ", ".join(p.name for p in policies)
    run = ExpiryRun()
    for lookup in sorted(keystore.lookups()):
        keys = keystore.data_keys(lookup, "expire")
        if not keys:
            continue  # destroyed meanwhile
        run.examined += 1
        times = [newest[k.key_id.hex()] for k in keys if k.key_id.hex() in newest]
        if not times:
            run.unused += 1
            continue
        last = dt.datetime.strptime(max(times), _TS).replace(tzinfo=dt.UTC)
        decision = expired(policies, last, now)
        if not decision.allowed:
            run.not_yet += 1
            continue
        refs = [patient_ref(k.key) for k in keys]
        holds, _ignored = legal_holds(backend, db, refs, registrars)
        decision = expired(policies, last, now, holds)
        if not decision.allowed:
            run.held += 1
            continue
        run.expired += 1
        key_ids = [k.key_id.hex() for k in keys]
        if dry_run:
            run.erasures.append({"key_ids": key_ids, "decision": decision.reason})
            continue
        body = {
            "patient_ref": refs[0],
            "lookup": lookup.hex(),
            "outcome": "erased",
            "key_ids": key_ids,
            "reason": EXPIRY_REASON,
            "policy": names,
            "decision": decision.reason,
            "requested_by": requested_by,
        }
        record_id = f"erasure-{uuid.uuid4()}"
        publish(signed_privacy_record(load_registrar_key(settings), "erasure", record_id, body))
        destruction: Destruction = keystore.destroy(lookup)
        if not destruction.complete:
            run.incomplete.append(record_id)
        run.erasures.append(
            {
                "record_id": record_id,
                "key_ids": key_ids,
                "decision": decision.reason,
                "confirmed_on": list(destruction.confirmed),
                "still_held_on": list(destruction.still_held),
            }
        )
    if run.expired and not dry_run:
        time.sleep(settings.sealing_key_cache_s + CACHE_MARGIN_S)
    return run
