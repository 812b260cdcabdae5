"""The auditor's stored formats: the rows of ``access_decisions``, ``alerts`` and
``alert_status`` (column orders, encoders and decoders), the published alert document
and the fingerprints and hash links computed over them (pure, but ``utc_now_ts``).

``alert_row`` encodes an alert and ``decode_alert_row`` is its one decoder: what
``careledger alerts`` shows and what ``stored_alert_fingerprint`` compares both come
from it, so the fingerprint of a stored alert is that of the alert it was written from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from ..alerts import Alert, cached_pseudonym
from ..decisions import AlertSeverity, Explanation, Flag, RestoredDecision, RuleCode
from ..history import NO_PATIENT_ID
from .decide import PlacedDecision

DECISION_COLUMNS: Final = (
    "event_id",
    "chain_id",
    "height",
    "idx",
    "occurred_at",
    "occurred_date",
    "actor_id",
    "patient_ref",
    "amends",
    "explanation_kind",
    "explanation",
    "searched",
    "flags",
    "severity",
    "score",
    "decided_at",
    "audit_run",
    "reference_known_at",
    "alert_ids",
)
ALERT_COLUMNS: Final = (
    "alert_id",
    "rule",
    "severity",
    "score",
    "actor_id",
    "patient_ref",
    "patient_refs",
    "event_ids",
    "evidence",
    "explanations_searched",
    "first_at",
    "last_at",
    "created_at",
    "audit_run",
    "version",
)
STATUS_COLUMNS: Final = (
    "alert_id",
    "seq",
    "status",
    "changed_by",
    "changed_at",
    "note",
    "prev_hash",
    "entry_hash",
)
#: what ``alert_document`` adds to ``Alert.to_dict`` (the status is left out of the
#: fingerprint: it changes with reviews, not with the alert's content)
_ALERT_SCHEMA: Final = "careledger.alert/1"
_ALERT_SOURCE: Final = "auditor"
#: alert columns that are about the run that wrote the row, not the alert's content
_ALERT_RUN_COLUMNS: Final = ("created_at", "audit_run")


_FOLLOW: Final = "follow:"
#: how a follower regroups alerts (``follow_run_id``): 2, the alerts it wrote anchor
#: their flags; 3, and each decision row names its flags' alerts, which a restart reads
#: back (ADR 0048)
FOLLOW_GROUPING: Final = 3
_RANGE: Final = "range:"


def follow_run_id(
    token: str,
    warm_until: str | None = None,
    from_ts: str | None = None,
    *,
    grouping: int = FOLLOW_GROUPING,
) -> str:
    """The ``audit_run`` of a follower's rows: ``follow:<token>``, then ``;warm=<time>``
    if it replayed the rules' windows up to that event time when it started,
    ``;from=<time>`` if it skipped events before that time, and ``;group=<n>`` for the
    way it regrouped alerts (``FOLLOW_GROUPING``, ADR 0048; absent: 1, the runs made
    before). With these, ``verify`` replays the run as it went
    (ADR 0016)."""
    run = _FOLLOW + token
    if warm_until is not None:
        run += f";warm={warm_until}"
    if from_ts is not None:
        run += f";from={from_ts}"
    if grouping != 1:
        run += f";group={grouping}"
    return run


@dataclass(frozen=True, slots=True)
class RunId:
    """A parsed ``audit_run``: a range run (``from_ts``/``to_ts``) or a follow run
    (``token``, ``warm_until``, ``from_ts``, ``grouping``)."""

    kind: str  # "range" or "follow"
    text: str
    from_ts: str | None = None
    to_ts: str | None = None
    token: str = ""
    warm_until: str | None = None
    grouping: int = 1


def parse_run_id(text: str) -> RunId | None:
    """``range:<from>..<to>`` or ``follow:<token>[;warm=<t>][;from=<t>][;group=2|3]``;
    None for anything else (a row no run of the auditor wrote)."""
    if text.startswith(_RANGE):
        lo, sep, hi = text[len(_RANGE) :].partition("..")
        if not sep or not _is_ts(lo) or not _is_ts(hi) or lo >= hi:
            return None
        return RunId("range", text, from_ts=lo, to_ts=hi)
    if text.startswith(_FOLLOW):
        token, *parts = text[len(_FOLLOW) :].split(";")
        if not token or not token.isalnum():
            return None
        fields: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key in fields:
                return None
            if key == "group":
                if value not in ("2", "3"):
                    return None
            elif key not in ("warm", "from") or not _is_ts(value):
                return None
            fields[key] = value
        return RunId(
            "follow",
            text,
            token=token,
            warm_until=fields.get("warm"),
            from_ts=fields.get("from"),
            grouping=int(fields.get("group", "1")),
        )
    return None


def _is_ts(text: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the event timestamp format)."""
    try:
        return parse_instant(text) == text
    except ValueError:
        return False


#: ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
#: without building an encoder per call (the same output)
_DUMPS: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Deterministic compact JSON (what is stored and compared across replays)."""
    return _DUMPS.encode(value)


def utc_now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(text: str) -> str:
    """``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` (UTC, optional ``Z``) ->
    the event timestamp format."""
    t = text.strip().removesuffix("Z").replace(" ", "T")
    try:
        moment = dt.datetime.fromisoformat(t)
    except ValueError as exc:
        raise ValueError(f"not a UTC date or time: {text!r}") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def patient_ref(patient_id: str, salt: str) -> str:
    return "" if patient_id == NO_PATIENT_ID else cached_pseudonym(patient_id, salt)


def _public_flag(flag: dict[str, Any]) -> dict[str, Any]:
    # flags never name a patient; related event ids stay (they are event ids)
    return flag


def decision_row(
    placed: PlacedDecision, *, salt: str, decided_at: str, audit_run: str
) -> tuple[Any, ...]:
    d = placed.decision
    pos = placed.position
    flags = d.flags
    severity = d.severity if flags else None
    explanation = d.explanation
    return (
        d.event_id,
        pos.chain_id,
        pos.height,
        pos.idx,
        d.occurred_at,
        _date(d.occurred_at[0:10]),
        d.actor_id,
        patient_ref(d.patient_id, salt),
        1 if d.amends else 0,
        "" if explanation is None else str(explanation.kind),
        "" if explanation is None else _explanation_json(explanation),
        _searched_json(d.searched),
        dumps([_public_flag(f.to_dict()) for f in flags]) if flags else "[]",
        "" if severity is None else str(severity),
        float(d.score) if flags else 0.0,
        decided_at,
        audit_run,
        placed.known_at,
        "",  # alert_ids: a follower's, once its flags are grouped (``with_alert_ids``)
    )


def with_alert_ids(row: tuple[Any, ...], alert_ids: str) -> tuple[Any, ...]:
    """A decision row (``decision_row``) with the alerts its flags went into: a JSON
    object, rule -> alert id (ADR 0048)."""
    return (*row[:_ALERT_IDS], alert_ids, *row[_ALERT_IDS + 1 :])


_ALERT_IDS: Final = DECISION_COLUMNS.index("alert_ids")


#: the columns ``restored_decision`` reads, in its order
RESTORED_COLUMNS: Final = (
    "event_id",
    "amends",
    "occurred_at",
    "actor_id",
    "patient_ref",
    "searched",
    "flags",
    "score",
    "alert_ids",
)


def restored_decision(values: Sequence[Any]) -> RestoredDecision | None:
    """A stored flagged decision (``RESTORED_COLUMNS``), as ``group_alerts`` needs it
    after a restart; None for a row without flags or that cannot be read (it then
    groups as if it had not been flagged: ``verify`` reports such rows)."""
    event_id, amends, occurred_at, actor_id, patient_ref, searched, flags, score, ids = (
        v.decode() if isinstance(v, bytes) else v for v in values
    )
    try:
        parsed = json.loads(flags)
        restored = tuple(
            Flag(
                RuleCode(f["code"]),
                AlertSeverity(f["severity"]),
                f.get("evidence") or {},
                bool(f.get("routine", False)),
            )
            for f in parsed
        )
        kinds = tuple(str(k) for k in json.loads(searched or "[]"))
        alert_ids = _alert_ids(ids)
    except (ValueError, TypeError, KeyError):
        return None
    if not restored:
        return None
    points = sum(f.score for f in restored)
    multiplier = float(score) / points if points else 1.0
    return RestoredDecision(
        event_id=str(event_id),
        occurred_at=str(occurred_at),
        actor_id=str(actor_id),
        patient_id=NO_PATIENT_ID,
        explanation=None,
        searched=kinds,
        flags=restored,
        multiplier=multiplier,
        amends=bool(amends),
        patient_ref=str(patient_ref),
        alert_ids=alert_ids,
    )


def _alert_ids(text: Any) -> tuple[tuple[str, str], ...]:
    """The ``alert_ids`` column: {} or '' -> (); a JSON object of strings -> its sorted
    (rule, alert id) pairs; anything else raises ValueError."""
    if not text:
        return ()
    parsed = json.loads(text)
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError("alert_ids is not an object of strings")
    return tuple(sorted(parsed.items()))


# Values many decisions share, encoded once (the same text as encoding each).
@lru_cache(maxsize=4096)
def _date(day: str) -> dt.date:
    return dt.date(int(day[0:4]), int(day[5:7]), int(day[8:10]))


@lru_cache(maxsize=1 << 14)
def _explanation_json(explanation: Explanation) -> str:
    return dumps(explanation.to_dict())


@lru_cache(maxsize=1024)
def _searched_json(searched: tuple[str, ...]) -> str:
    return dumps(list(searched))


def alert_document(alert: Alert) -> dict[str, Any]:
    """The alert as published and shown (patients only as pseudonyms)."""
    doc = alert.to_dict()
    doc["schema"] = _ALERT_SCHEMA
    doc["source"] = _ALERT_SOURCE
    return doc


def _fingerprint(document: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(document).encode()).hexdigest()


def alert_fingerprint(alert: Alert) -> str:
    """What must change for a stored alert to be rewritten and published again."""
    doc = alert_document(alert)
    doc.pop("status", None)
    return _fingerprint(doc)


def alert_row(alert: Alert, *, created_at: str, audit_run: str, version: int) -> tuple[Any, ...]:
    """The ``alerts`` row of an alert (``ALERT_COLUMNS`` order; ``decode_alert_row``
    reads it back)."""
    return (
        alert.alert_id,
        str(alert.rule),
        str(alert.severity),
        float(alert.score),
        alert.actor_id,
        alert.patient_ref or "",
        dumps(list(alert.patient_refs)),
        dumps(list(alert.event_ids)),
        dumps(dict(alert.evidence)),
        dumps(list(alert.explanations_searched)),
        alert.first_at,
        alert.last_at,
        created_at,
        audit_run,
        version,
    )


def decode_alert_row(row: Sequence[Any]) -> dict[str, Any]:
    """An alert read back from ``alerts`` (``ALERT_COLUMNS`` order, text as str or bytes):
    the fields of ``Alert.to_dict`` but its status, then ``created_at`` and ``audit_run``
    (the row's ``version`` is left out). What ``careledger alerts`` shows and what
    ``stored_alert_fingerprint`` hashes."""
    t = [_text(v) for v in row]
    return {
        "alert_id": t[0],
        "rule": t[1],
        "severity": t[2],
        "score": float(row[3]),
        "actor_id": t[4],
        "patient_ref": t[5] or None,
        "patient_refs": json.loads(t[6]),
        "event_ids": json.loads(t[7]),
        "evidence": json.loads(t[8]),
        "explanations_searched": json.loads(t[9]),
        "first_at": t[10],
        "last_at": t[11],
        "created_at": t[12],
        "audit_run": t[13],
    }


def stored_alert_fingerprint(row: Sequence[Any]) -> str:
    """``alert_fingerprint`` of an alert read back from ``alerts`` (ALERT_COLUMNS order)."""
    doc = decode_alert_row(row)
    for column in _ALERT_RUN_COLUMNS:
        del doc[column]
    doc["schema"] = _ALERT_SCHEMA
    doc["source"] = _ALERT_SOURCE
    return _fingerprint(doc)


def status_entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """Hash link of one status change: SHA-256 over the previous entry's hash and the
    canonical JSON of this one (so a deleted or edited change breaks the links)."""
    data = b"careledger-alert-status/1\x00" + prev_hash.encode() + b"\x00" + dumps(entry).encode()
    return hashlib.sha256(data).hexdigest()


def status_history_intact(entries: Sequence[Mapping[str, Any]]) -> bool:
    """True if an alert's status changes (``seq`` order) are complete and their hash links
    hold: none edited, deleted or inserted without recomputing every later link."""
    prev = ""
    for seq, e in enumerate(entries):
        body = {k: e[k] for k in STATUS_COLUMNS if k != "entry_hash"}
        body["seq"] = int(body["seq"])
        if (
            e["seq"] != seq
            or e["prev_hash"] != prev
            or status_entry_hash(prev, body) != e["entry_hash"]
        ):
            return False
        prev = e["entry_hash"]
    return True


def status_histories(rows: Iterable[Sequence[Any]]) -> dict[str, list[dict[str, Any]]]:
    """``alert_status`` rows (``STATUS_COLUMNS`` order, sorted by alert id and seq) ->
    each alert's changes as dicts (``seq`` an int, the rest text)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        entry: dict[str, Any] = dict(zip(STATUS_COLUMNS, (_text(v) for v in r), strict=True))
        entry["seq"] = int(r[1])
        out.setdefault(entry["alert_id"], []).append(entry)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
