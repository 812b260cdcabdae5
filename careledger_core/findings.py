"""Verifier findings: stable codes, severities and the ``Finding`` record.

Codes are part of the contract (alerts topic, CLI output, dashboards): never rename one,
only add. Each code has a default severity (``FindingCode.default_severity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = ["DEFAULT_SEVERITY", "Finding", "FindingCode", "Severity"]


class Severity(StrEnum):
    CRITICAL = "critical"  # evidence of tampering or loss of committed data
    ERROR = "error"  # the store is inconsistent in a way that needs a human
    WARNING = "warning"  # suspicious or degraded, not proof of tampering
    INFO = "info"


class FindingCode(StrEnum):
    # events of a block
    EVENT_HASH_MISMATCH = "EVENT_HASH_MISMATCH"  # stored leaf hash != hash of canonical bytes
    EVENT_NOT_CANONICAL = "EVENT_NOT_CANONICAL"  # stored bytes are not canonical / invalid
    EVENT_FIELD_MISMATCH = "EVENT_FIELD_MISMATCH"  # a denormalised column disagrees
    EVENT_MISSING = "EVENT_MISSING"  # an index of the block has no event row
    EVENT_UNEXPECTED = "EVENT_UNEXPECTED"  # an event row beyond the block's event_count
    EVENT_OUT_OF_ORDER = "EVENT_OUT_OF_ORDER"  # kafka offsets not increasing with index
    EVENT_OFFSET_OUT_OF_RANGE = "EVENT_OFFSET_OUT_OF_RANGE"  # offset outside the block range
    EVENT_DUPLICATE_ID = "EVENT_DUPLICATE_ID"  # the same event_id twice
    # blocks
    MERKLE_ROOT_MISMATCH = "MERKLE_ROOT_MISMATCH"
    EVENT_COUNT_MISMATCH = "EVENT_COUNT_MISMATCH"
    BLOCK_HASH_MISMATCH = "BLOCK_HASH_MISMATCH"  # stored block_hash != hash of header bytes
    BLOCK_HEADER_MISMATCH = "BLOCK_HEADER_MISMATCH"  # a header column disagrees with the bytes
    BLOCK_HEADER_INVALID = "BLOCK_HEADER_INVALID"  # header bytes do not decode/validate
    PREV_HASH_MISMATCH = "PREV_HASH_MISMATCH"
    HEIGHT_GAP = "HEIGHT_GAP"
    HEIGHT_FORK = "HEIGHT_FORK"  # two blocks at one height
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    KEY_UNKNOWN = "KEY_UNKNOWN"
    # offsets and chain
    OFFSET_GAP = "OFFSET_GAP"  # block h+1 does not start at last_offset(h)+1
    OFFSET_OVERLAP = "OFFSET_OVERLAP"
    CHAIN_TRUNCATED = "CHAIN_TRUNCATED"  # head below a trusted checkpoint
    CHAIN_REWRITTEN = "CHAIN_REWRITTEN"  # block hash differs from a trusted checkpoint
    UNCOMMITTED_EVENTS = "UNCOMMITTED_EVENTS"  # event rows without a header (crash leftover)
    # checkpoints (ADR 0012): the signed RFC 6962 roots against the store and each other
    CHECKPOINT_ROOT_MISMATCH = "CHECKPOINT_ROOT_MISMATCH"  # stored prefix != signed root
    CHECKPOINT_INCONSISTENT = "CHECKPOINT_INCONSISTENT"  # a signed root does not extend another
    CHECKPOINTS_MISSING = "CHECKPOINTS_MISSING"  # checkpoint records gone from the topic
    COSIGNATURE_INVALID = "COSIGNATURE_INVALID"  # a policy witness's line does not verify
    # sources (ADR 0010): who emitted each access event, and whether any went missing
    SOURCE_UNSIGNED = "SOURCE_UNSIGNED"  # a chained event has no source attestation
    SOURCE_ATTESTATION_INVALID = "SOURCE_ATTESTATION_INVALID"  # malformed attestation row
    SOURCE_SIGNATURE_INVALID = "SOURCE_SIGNATURE_INVALID"  # batch signature does not verify
    SOURCE_PROOF_INVALID = "SOURCE_PROOF_INVALID"  # event not in the signed batch
    SOURCE_KEY_UNKNOWN = "SOURCE_KEY_UNKNOWN"  # key not registered (at that time)
    SOURCE_KEY_REVOKED = "SOURCE_KEY_REVOKED"  # key revoked when the batch was signed
    SOURCE_KEY_NOT_FOR_SOURCE = "SOURCE_KEY_NOT_FOR_SOURCE"  # key of another source
    SOURCE_SEQ_DUPLICATE = "SOURCE_SEQ_DUPLICATE"  # one sequence number chained twice
    SOURCE_SEQ_GAP = "SOURCE_SEQ_GAP"  # sequence numbers sent but never chained
    SOURCE_HEARTBEAT_INVALID = "SOURCE_HEARTBEAT_INVALID"  # heartbeat fails its signature
    # ADR 0015: signed_at outside the window of the block's signed broker append times
    SOURCE_SIGNED_AT_SKEW = "SOURCE_SIGNED_AT_SKEW"
    # ADR 0015: a block signed by a processor key that was not the current one (retired
    # by a ledgered rotation, not yet valid, or not a registered processor key)
    BLOCK_KEY_NOT_CURRENT = "BLOCK_KEY_NOT_CURRENT"
    # the events' Kafka offsets differ from the header's signed event_offsets (ADR 0014)
    EVENT_OFFSETS_MISMATCH = "EVENT_OFFSETS_MISMATCH"
    # the auditor's rows (ADR 0016): decisions and alerts recomputed from the ledger,
    # alert status rows against the ledgered status changes
    DECISION_MISMATCH = "DECISION_MISMATCH"  # a decision row differs from its replay
    DECISION_MISSING = "DECISION_MISSING"  # a decision its audit run made has no row
    DECISION_UNEXPECTED = "DECISION_UNEXPECTED"  # a decision row no audit run made
    ALERT_MISMATCH = "ALERT_MISMATCH"  # an alert row differs from the alert recomputed
    ALERT_MISSING = "ALERT_MISSING"  # an alert an audit run raised has no row
    ALERT_UNEXPECTED = "ALERT_UNEXPECTED"  # an alert row no audit run raised
    ALERT_STALE = "ALERT_STALE"  # an alert whose accesses a later run decided otherwise
    ALERT_STATUS_MISMATCH = "ALERT_STATUS_MISMATCH"  # status row edited / links broken
    ALERT_STATUS_MISSING = "ALERT_STATUS_MISSING"  # a ledgered status change has no row
    ALERT_STATUS_NOT_LEDGERED = "ALERT_STATUS_NOT_LEDGERED"  # a status row never ledgered
    ALERT_STATUS_PENDING = "ALERT_STATUS_PENDING"  # a status row not chained yet
    # ADR 0017: a row differs from (or is missing in) the replica (verify --replica)
    REPLICA_MISMATCH = "REPLICA_MISMATCH"
    # ADR 0023: the same record chained twice (sent twice, or over TCP and UDP): the same
    # source and event content at two positions; reported, not a sign of tampering
    DUPLICATE_EVENT = "DUPLICATE_EVENT"
    # ADR 0024: a consent decision point's answer, checked and replayed against the ledger
    CONSENT_DECISION_TAMPERED = "CONSENT_DECISION_TAMPERED"  # record edited / unreadable
    CONSENT_DECISION_NOT_LEDGERED = "CONSENT_DECISION_NOT_LEDGERED"  # no signed event for it
    CONSENT_DECISION_RECORD_MISSING = "CONSENT_DECISION_RECORD_MISSING"  # ledgered, row gone
    CONSENT_DECISION_REPLAY_MISMATCH = "CONSENT_DECISION_REPLAY_MISMATCH"  # replay differs
    CONSENT_DECISION_PENDING = "CONSENT_DECISION_PENDING"  # its signed event not chained yet
    # ADR 0037: a sealed ledger's events opened with the key store (verify on a sealed
    # ledger): every sealed part must open with the data key it names, to the commitment
    # its signed document holds, under its own patient's key, and the pseudonym columns
    # must be the ones the key store gives
    SEALED_PART_INVALID = "SEALED_PART_INVALID"  # does not open, or not to its commitment
    SEALED_KEY_MISSING = "SEALED_KEY_MISSING"  # its data key is gone, and no erasure says so
    SEALED_KEY_NOT_PATIENTS = "SEALED_KEY_NOT_PATIENTS"  # under another patient's data key
    SEALED_REF_MISMATCH = "SEALED_REF_MISMATCH"  # patient_id / actor_id not its pseudonyms

    @property
    def default_severity(self) -> Severity:
        return DEFAULT_SEVERITY[self]


_C, _E, _W = Severity.CRITICAL, Severity.ERROR, Severity.WARNING

DEFAULT_SEVERITY: Final[Mapping[FindingCode, Severity]] = MappingProxyType(
    {
        FindingCode.EVENT_HASH_MISMATCH: _C,
        FindingCode.EVENT_NOT_CANONICAL: _C,
        FindingCode.EVENT_FIELD_MISMATCH: _E,
        FindingCode.EVENT_MISSING: _C,
        FindingCode.EVENT_UNEXPECTED: _C,
        FindingCode.EVENT_OUT_OF_ORDER: _C,
        FindingCode.EVENT_OFFSET_OUT_OF_RANGE: _C,
        FindingCode.EVENT_DUPLICATE_ID: _W,
        FindingCode.EVENT_OFFSETS_MISMATCH: _C,
        FindingCode.MERKLE_ROOT_MISMATCH: _C,
        FindingCode.EVENT_COUNT_MISMATCH: _C,
        FindingCode.BLOCK_HASH_MISMATCH: _C,
        FindingCode.BLOCK_HEADER_MISMATCH: _C,
        FindingCode.BLOCK_HEADER_INVALID: _C,
        FindingCode.PREV_HASH_MISMATCH: _C,
        FindingCode.HEIGHT_GAP: _C,
        FindingCode.HEIGHT_FORK: _C,
        FindingCode.SIGNATURE_INVALID: _C,
        FindingCode.KEY_UNKNOWN: _C,
        FindingCode.OFFSET_GAP: _E,
        FindingCode.OFFSET_OVERLAP: _E,
        FindingCode.CHAIN_TRUNCATED: _C,
        FindingCode.CHAIN_REWRITTEN: _C,
        FindingCode.UNCOMMITTED_EVENTS: _W,
        FindingCode.CHECKPOINT_ROOT_MISMATCH: _C,
        FindingCode.CHECKPOINT_INCONSISTENT: _C,
        FindingCode.CHECKPOINTS_MISSING: _E,
        FindingCode.COSIGNATURE_INVALID: _C,
        FindingCode.SOURCE_UNSIGNED: _E,
        FindingCode.SOURCE_ATTESTATION_INVALID: _C,
        FindingCode.SOURCE_SIGNATURE_INVALID: _C,
        FindingCode.SOURCE_PROOF_INVALID: _C,
        FindingCode.SOURCE_KEY_UNKNOWN: _C,
        FindingCode.SOURCE_KEY_REVOKED: _C,
        FindingCode.SOURCE_KEY_NOT_FOR_SOURCE: _C,
        FindingCode.SOURCE_SEQ_DUPLICATE: _C,
        FindingCode.SOURCE_SEQ_GAP: _E,
        FindingCode.SOURCE_HEARTBEAT_INVALID: _E,
        FindingCode.SOURCE_SIGNED_AT_SKEW: _C,
        FindingCode.BLOCK_KEY_NOT_CURRENT: _C,
        FindingCode.DECISION_MISMATCH: _C,
        FindingCode.DECISION_MISSING: _C,
        FindingCode.DECISION_UNEXPECTED: _C,
        FindingCode.ALERT_MISMATCH: _C,
        FindingCode.ALERT_MISSING: _C,
        FindingCode.ALERT_UNEXPECTED: _C,
        FindingCode.ALERT_STALE: Severity.INFO,
        FindingCode.ALERT_STATUS_MISMATCH: _C,
        FindingCode.ALERT_STATUS_MISSING: _C,
        FindingCode.ALERT_STATUS_NOT_LEDGERED: _C,
        FindingCode.ALERT_STATUS_PENDING: Severity.INFO,
        FindingCode.REPLICA_MISMATCH: _E,
        FindingCode.DUPLICATE_EVENT: Severity.INFO,
        FindingCode.CONSENT_DECISION_TAMPERED: _C,
        FindingCode.CONSENT_DECISION_NOT_LEDGERED: _C,
        FindingCode.CONSENT_DECISION_RECORD_MISSING: _C,
        FindingCode.CONSENT_DECISION_REPLAY_MISMATCH: _C,
        FindingCode.CONSENT_DECISION_PENDING: Severity.INFO,
        FindingCode.SEALED_PART_INVALID: _C,
        FindingCode.SEALED_KEY_MISSING: _E,
        FindingCode.SEALED_KEY_NOT_PATIENTS: _C,
        FindingCode.SEALED_REF_MISMATCH: _C,
    }
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by the verifier, located as precisely as known."""

    code: FindingCode
    severity: Severity
    chain_id: str
    height: int | None = None
    event_index: int | None = None
    event_id: str | None = None
    message: str = ""
    details: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # accept plain strings for code/severity, store the enums
        object.__setattr__(self, "code", FindingCode(self.code))
        object.__setattr__(self, "severity", Severity(self.severity))

    @classmethod
    def of(
        cls,
        code: FindingCode,
        chain_id: str,
        message: str,
        *,
        height: int | None = None,
        event_index: int | None = None,
        event_id: str | None = None,
        details: Mapping[str, object] | None = None,
        severity: Severity | None = None,
    ) -> Finding:
        """Build a finding with the code's default severity unless one is given."""
        code = FindingCode(code)
        return cls(
            code=code,
            severity=severity if severity is not None else code.default_severity,
            chain_id=chain_id,
            height=height,
            event_index=event_index,
            event_id=event_id,
            message=message,
            details=dict(details) if details else {},
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-compatible dict (enum values as plain strings)."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "chain_id": self.chain_id,
            "height": self.height,
            "event_index": self.event_index,
            "event_id": self.event_id,
            "message": self.message,
            "details": dict(self.details),
        }
