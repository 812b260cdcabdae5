"""The processor's source gate: may this access-event record be chained? (ADR 0010)

``SourceGate.admit(value, kafka_ts, where)`` decodes one record of the events topic and
returns the event, its canonical bytes and its attestation, or raises:

* a ``ValidationError`` (malformed envelope or event): the record is dead-lettered;
* a ``SourceAuthError`` with a stable code: the record is quarantined —
  ``UNSIGNED`` (a plain event while signatures are required), ``BAD_SIGNATURE``,
  ``BAD_PROOF``, ``UNKNOWN_KEY``, ``REVOKED_KEY``, ``KEY_NOT_FOR_SOURCE``,
  ``SIGNED_AT_SKEW`` (the signed time is far from the record's Kafka time) and
  ``REPLAYED`` (a sequence number of the source already chained from another offset).

An unknown key first makes the gate re-read the registry (at most every
``refresh_interval_s``), so a key registered before its first batch was produced is
found even when the registration has not been chained yet.

Replay detection is local and bounded: the gate remembers the position of the last
``replay_window`` sequence numbers it admitted. Reading the same offset again (after a
failed write or a restart) is not a replay; the same sequence number at another
offset is. Older replays, and replays split across processor instances, are found by
``careledger verify``, which checks sequence numbers over the whole ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from careledger_core.event import AccessEvent, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.source import (
    Attestation,
    BatchVerifier,
    SourceAuthError,
    SourceRegistry,
    decode_signed_event,
    looks_signed,
)

log = logging.getLogger("careledger.processor.sources")


def _epoch_seconds(ts: str) -> float:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Admitted:
    event: AccessEvent
    canonical: bytes
    leaf_hash: bytes
    attestation: Attestation | None


class SourceGate:
    def __init__(
        self,
        *,
        require_signatures: bool,
        load_registry: Callable[[], SourceRegistry] | None,
        max_skew_s: float = 900.0,
        refresh_interval_s: float = 5.0,
        replay_window: int = 200_000,
    ) -> None:
        self.require_signatures = require_signatures
        self._load_registry = load_registry
        self._verifier = BatchVerifier(SourceRegistry())
        self._loaded_at: float | None = None
        self.max_skew_s = max_skew_s
        self.refresh_interval_s = refresh_interval_s
        self._replay_window = replay_window
        # (source, epoch, seq) -> where it was admitted: (chain id, offset)
        self._seen: OrderedDict[tuple[str, str, int], tuple[str, int]] = OrderedDict()
        self.quarantined = 0

    @property
    def signature_checks(self) -> int:
        return self._verifier.signature_checks

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the registry; returns whether it was (re)loaded."""
        if self._load_registry is None:
            return False
        now = time.monotonic()
        if (
            not force
            and self._loaded_at is not None
            and now - self._loaded_at < self.refresh_interval_s
        ):
            return False
        self._loaded_at = now
        try:
            registry = self._load_registry()
        except Exception as exc:  # the registry topic is unreachable: keep what we have
            log.warning("cannot read the source registry: %s", type(exc).__name__)
            return False
        self._verifier.registry = registry
        log.info("source registry loaded: %d keys", len(registry))
        return True

    def admit(self, value: bytes, kafka_ts: float, where: tuple[str, int]) -> Admitted:
        if not looks_signed(value):
            event, canonical = decode_and_canonicalize(value)
            if self.require_signatures:
                raise SourceAuthError("event is not signed by a registered source", code="UNSIGNED")
            return Admitted(event, canonical, leaf_hash(canonical), None)
        event, canonical, att = decode_signed_event(value)
        leaf = leaf_hash(canonical)
        st = att.statement
        if self._loaded_at is None:
            self.refresh(force=True)
        try:
            self._verifier.check(leaf, att)
        except SourceAuthError as exc:
            if exc.code != "UNKNOWN_KEY" or not self.refresh():
                raise
            self._verifier.check(leaf, att)  # the key may have been registered meanwhile
        skew = abs(_epoch_seconds(st.signed_at) - kafka_ts)
        if skew > self.max_skew_s:
            raise SourceAuthError(
                f"batch signed {skew:.0f} s away from the record's Kafka time",
                code="SIGNED_AT_SKEW",
                details={"source_id": st.source_id, "max_skew_s": self.max_skew_s},
            )
        key = (st.source_id, st.epoch, att.seq)
        before = self._seen.get(key)
        if before is not None and before != where:
            raise SourceAuthError(
                "sequence number already chained from another record",
                code="REPLAYED",
                details={"source_id": st.source_id, "epoch": st.epoch, "seq": att.seq},
            )
        self._seen[key] = where
        self._seen.move_to_end(key)
        if len(self._seen) > self._replay_window:
            self._seen.popitem(last=False)
        return Admitted(event, canonical, leaf, att)
