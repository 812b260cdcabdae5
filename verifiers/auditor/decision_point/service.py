"""The decision point: the consent ledger kept current, questions decided and ledgered.

``DecisionPoint.refresh()`` reads the consent chains' new committed blocks (the
server calls it every ``refresh_s``; the one-shot command once); ``decide()`` answers
a question at the decision point's clock with what it has read, builds the record,
hands it to the sink and returns it once it is ledgered (else
:class:`NotLedgered`: a decision that cannot be ledgered is not given).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from careledger.storage.backend import SqlBackend
from careledger_core.errors import CareledgerError, InfrastructureError
from careledger_core.source import timestamp_of

from .engine import ConsentLedger, LedgeredConsent, build_record
from .ledger import DecisionSink
from .model import Question, Requester, decision_bytes, decision_sha256
from .sealed import SealedReader
from .store import read_consent_heads, read_consents

__all__ = ["DecisionPoint", "NotLedgered"]

log = logging.getLogger("careledger.decision_point")


class NotLedgered(InfrastructureError):
    """The decision could not be ledgered, so it is not given."""

    code = "DECISION_NOT_LEDGERED"


class DecisionPoint:
    def __init__(
        self,
        sink: DecisionSink,
        *,
        backend: SqlBackend | None = None,
        database: str | None = None,
        chains: Sequence[str] = (),
        clock: Callable[[], float] | None = None,
        ledger_timeout: float = 30.0,
        sealed: SealedReader | None = None,
    ) -> None:
        import time

        #: a sealed ledger's reader (ADR 0037): consents opened through the key store
        self.sealed = sealed
        self.sink = sink
        self.backend = backend
        self.database = database
        self.chains = tuple(chains)
        self.ledger = ConsentLedger()
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._last_us = 0
        self.ledger_timeout = ledger_timeout

    # -- the consent ledger
    def load(self, records: Sequence[LedgeredConsent], heads: Mapping[str, int]) -> int:
        """Apply records read elsewhere (tests, the benchmark)."""
        with self._lock:
            return self.ledger.apply(records, heads)

    def refresh(self) -> int:
        """Read the consent chains' blocks committed since the last refresh."""
        if self.backend is None or self.database is None:
            return 0
        heads = read_consent_heads(self.backend, self.database, self.chains)
        new: list[LedgeredConsent] = []
        moved: dict[str, int] = {}
        for chain, head in sorted(heads.items()):
            have = self.ledger.heads.get(chain, -1)
            if head > have:
                new.extend(
                    read_consents(self.backend, self.database, chain, have, head, self.sealed)
                )
                moved[chain] = head
        if not moved:
            return 0
        with self._lock:
            return self.ledger.apply(new, moved)

    # -- deciding
    def _now(self) -> str:
        """The decision point's clock, strictly increasing (two decisions never share
        an instant: each is its own point in the ledger's time)."""
        us = int(self._clock() * 1_000_000)
        if us <= self._last_us:
            us = self._last_us + 1
        self._last_us = us
        return timestamp_of(us / 1_000_000)

    def answer_only(
        self, question: Question, requester: Requester
    ) -> tuple[dict[str, Any], bytes, str]:
        """Decide and build the record, without ledgering it: (record, bytes, sha256)."""
        with self._lock:
            at = self._now()
            record = build_record(
                self.ledger,
                question,
                at=at,
                decision_id=str(uuid.uuid4()),
                requester=requester,
            )
        data = decision_bytes(record)
        return record, data, decision_sha256(data)

    def decide(self, question: Question, requester: Requester) -> tuple[dict[str, Any], str]:
        """Decide, ledger, and return (record, its SHA-256); :class:`NotLedgered` if
        the sink did not confirm."""
        record, data, sha = self.answer_only(question, requester)
        try:
            ok = self.sink.ledger(record, data, sha, self.ledger_timeout)
        except CareledgerError as exc:
            log.error("decision %s not ledgered: %s", record["decision_id"], exc)
            ok = False
        if not ok:
            raise NotLedgered(
                "the decision could not be sent to Kafka to be ledgered, so it is not given"
            )
        return record, sha
