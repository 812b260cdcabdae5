"""The audit runner: the rules engine over the store (``careledger audit``).

* **Range** (``range_run.audit_range``): decide the committed access events of
  ``[from, to)`` and *replace* that range's decisions and alerts in ClickHouse; an event
  already decided is decided again with the knowledge cutoff its decision used, so a
  replay reproduces it (``reconsider``: with what is known now).
* **Follow** (``follow.Follower``): every ``audit_poll_interval_s``, decide the blocks
  committed since the last poll and upsert (and publish) the alerts that are new or grew.
* **Reviews** (``store.AuditStore.reviews``, pure ``reviews.review_alerts``): closed
  alerts take no more flags; resolved alerts whose status history is intact are
  confirmed violations; a broken history is reported, never counted.

Modules: ``decide`` (pure: range bounds, ledgered events and references, knowledge
cutoffs, ``decide_range``), ``rows`` (the stored rows, the alert document, fingerprints
and status hash links), ``reviews``, ``store`` (ClickHouse and the salt file),
``publish`` (alerts to Kafka), ``range_run`` and ``follow``. The pure parts are separate
from the I/O so they can be unit-tested without services.
"""

from __future__ import annotations

from .decide import (
    NOTHING_KNOWN,
    Knowledge,
    LedgeredEvent,
    LedgeredReference,
    PlacedDecision,
    Position,
    StoredCutoffs,
    decide_range,
    ledger_times,
    lookahead_us,
    plan_knowledge,
    read_bounds,
    sort_decisions,
    warmup_us,
)
from .follow import Follower
from .publish import AlertPublisher, KafkaAlertPublisher
from .range_run import RangePlan, RangeResult, audit_range, plan_range, range_run_id
from .reviews import (
    ConfirmedCase,
    ReviewedAlert,
    Reviews,
    closed_alert_ids,
    report_broken_histories,
    review_alerts,
    reviewed_alert,
)
from .rows import (
    ALERT_COLUMNS,
    DECISION_COLUMNS,
    STATUS_COLUMNS,
    RunId,
    alert_document,
    alert_fingerprint,
    alert_row,
    decision_row,
    decode_alert_row,
    dumps,
    follow_run_id,
    parse_instant,
    parse_run_id,
    patient_ref,
    status_entry_hash,
    status_histories,
    status_history_intact,
    stored_alert_fingerprint,
    utc_now_ts,
)
from .store import INSERT_BATCH, SALT_FILE, AuditSource, AuditStore, load_salt

__all__ = [
    "ALERT_COLUMNS",
    "DECISION_COLUMNS",
    "INSERT_BATCH",
    "NOTHING_KNOWN",
    "SALT_FILE",
    "STATUS_COLUMNS",
    "AlertPublisher",
    "AuditSource",
    "AuditStore",
    "ConfirmedCase",
    "Follower",
    "KafkaAlertPublisher",
    "Knowledge",
    "LedgeredEvent",
    "LedgeredReference",
    "PlacedDecision",
    "Position",
    "RangePlan",
    "RangeResult",
    "ReviewedAlert",
    "Reviews",
    "RunId",
    "StoredCutoffs",
    "alert_document",
    "alert_fingerprint",
    "alert_row",
    "audit_range",
    "closed_alert_ids",
    "decide_range",
    "decision_row",
    "decode_alert_row",
    "dumps",
    "follow_run_id",
    "ledger_times",
    "load_salt",
    "lookahead_us",
    "parse_instant",
    "parse_run_id",
    "patient_ref",
    "plan_knowledge",
    "plan_range",
    "range_run_id",
    "read_bounds",
    "report_broken_histories",
    "review_alerts",
    "reviewed_alert",
    "sort_decisions",
    "status_entry_hash",
    "status_histories",
    "status_history_intact",
    "stored_alert_fingerprint",
    "utc_now_ts",
    "warmup_us",
]
