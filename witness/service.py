"""The witness protocol over its state: one method per C2SP tlog-witness call.

``add_checkpoint(body)`` answers exactly as C2SP tlog-witness says (see
``careledger_core.witness``): 200 and one cosignature line, 400, 403, 404, 409
(``text/x.tlog.size``, the latest cosigned size), 422. The refusal messages name the
rule, never the request's content. ``checkpoint(origin_hash)`` is the monitoring call
(``GET /<hex SHA-256 of the origin>/checkpoint``): the latest cosigned checkpoint with
the log's signature and this witness's cosignature.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from careledger_core.errors import CheckpointError
from careledger_core.witness import (
    SIZE_CONTENT_TYPE,
    AddCheckpointRefused,
    Cosignature,
    Status,
    attach_cosignatures,
    cosign,
    examine,
)
from witness.config import WitnessConfig
from witness.store import WitnessStore

log = logging.getLogger("careledger.witness")

__all__ = ["TEXT", "Reply", "WitnessService"]

TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


def _text(status: int, message: str) -> Reply:
    return Reply(status, TEXT, (message + "\n").encode("utf-8"))


class WitnessService:
    def __init__(
        self,
        config: WitnessConfig,
        store: WitnessStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store or WitnessStore(config.state_dir)
        self._clock = clock
        self._by_hash = {hashlib.sha256(o.encode("utf-8")).hexdigest(): o for o in config.logs}

    @property
    def vkey(self) -> str:
        return self.config.witness_key.vkey

    def _sign(self, body: str) -> Cosignature:
        return cosign(body, self.config.name, self.config.key, max(1, int(self._clock())))

    def add_checkpoint(self, data: bytes) -> Reply:
        """One add-checkpoint request (blocking: runs the state transaction)."""
        try:
            submission = examine(data, self.config.logs, max_bytes=self.config.max_request_bytes)
        except AddCheckpointRefused as exc:
            log.info("add-checkpoint refused: %d %s", exc.status, exc.message)
            return _text(exc.status, exc.message)
        outcome = self.store.submit(submission, self._sign, int(self._clock()))
        decision = outcome.decision
        if decision.evidence is not None:
            log.warning(
                "EVIDENCE kept (%s) for %s: %s",
                decision.evidence.kind.value,
                submission.origin,
                decision.evidence.reason,
            )
        if outcome.cosignature is not None:
            log.info("cosigned %s at size %d", submission.origin, submission.checkpoint.size)
            return Reply(Status.OK, TEXT, (outcome.cosignature.line + "\n").encode("utf-8"))
        log.info(
            "add-checkpoint refused for %s: %d %s",
            submission.origin,
            decision.status,
            decision.reason,
        )
        if decision.status == Status.CONFLICT:
            return Reply(Status.CONFLICT, SIZE_CONTENT_TYPE, f"{decision.latest_size}\n".encode())
        return _text(decision.status, decision.reason)

    def checkpoint(self, origin_hash: str) -> Reply:
        """The latest cosigned checkpoint of the log whose origin hashes to ``origin_hash``."""
        origin = self._by_hash.get(origin_hash)
        head = self.store.head(origin) if origin is not None else None
        if head is None:
            return _text(Status.NOT_FOUND, "no checkpoint cosigned for this log")
        try:
            note = attach_cosignatures(head.note, [head.cosignature])
        except CheckpointError:  # a note we accepted is well-formed; never expected
            return _text(500, "stored checkpoint is malformed")
        return Reply(Status.OK, TEXT, note.encode("utf-8"))

    def index(self) -> str:
        heads = {h.origin: h for h in self.store.heads()}
        lines = [f"careledger witness {self.config.name}", self.vkey, "", "logs:"]
        for origin in sorted(self.config.logs):
            head = heads.get(origin)
            size = f"size {head.size}" if head else "nothing cosigned yet"
            lines.append(f"  {origin}  {size}")
        lines.append(f"evidence: {sum(e['status'] == 'open' for e in self.store.evidence())} open")
        return "\n".join(lines) + "\n"
