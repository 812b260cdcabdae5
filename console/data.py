"""What the console's pages read, over one ClickHouse database: the alerts with the status
the ledger supports, the actors' directory entries, the chart series and the pipeline's
health. The same readers as the CLI (``alerts list``/``show``, ``status``,
``access-report``), so a page and a command never disagree.

On a sealed ledger (ADR 0037) the pages work on pseudonyms, as the auditor does: alerts
and accesses name patients and actors by the ledger's pseudonyms, and staff names stay
sealed (no directory entry is opened for a page). What needs an identifier goes through
the key store, unwraps counted under ``console``: a patient's pseudonym from their id and
system, a patient's history (``patient-view``'s opening), and a re-identification, which
opens one of the pseudonym's committed accesses once the console ledgered it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from careledger.config import Settings
from careledger.keystore import KeyStore
from careledger.storage.backend import ClickHouseBackend, SqlBackend
from careledger.storage.migrations import check_identifier
from careledger.storage.store import ChainStore
from careledger_core.event import AccessEvent, normalise_identifier
from careledger_core.sealed_event import key_subject
from careledger_core.sealing import patient_ref
from verifiers.auditor.alerts import patient_pseudonym
from verifiers.auditor.alerts_cli import _with_status, status_view
from verifiers.auditor.alerts_view import sort_alerts
from verifiers.auditor.casework import AlertBook, assignee
from verifiers.reports.access_report import SealedAccess
from verifiers.reports.directory import StaffEntry, staff_directory

from .ledger import CONSOLE_SOURCE_SYSTEM

__all__ = ["AlertFilter", "ConsoleData"]


@dataclass(frozen=True, slots=True)
class AlertFilter:
    rule: str = ""
    status: str = ""
    actor: str = ""
    department: str = ""
    patient_ref: str = ""
    start: str = ""  # first event at or after (ISO date or instant)
    end: str = ""  # first event before
    sort: str = "risk"
    limit: int = 100


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_of(event: AccessEvent, pseudonym: str, salt: str, keystore: KeyStore) -> bool:
    """Whether the opened ``event`` is of the patient the alerts call ``pseudonym``,
    recomputed from the key store (a row's pseudonym column is not trusted)."""
    lookup = keystore.lookup(*key_subject(event))
    return any(
        patient_pseudonym(patient_ref(k.key), salt) == pseudonym
        for k in keystore.data_keys(lookup, "reidentify")
    )


class ConsoleData:
    """One reader per request (clickhouse-driver connections are not shared between
    threads): ``with ConsoleData(settings) as data: ...``."""

    def __init__(
        self, settings: Settings, backend: SqlBackend | None = None, *, writes: bool = False
    ) -> None:
        """``writes``: the case actions append status changes (the writer's login); every
        page reads as the read-only reader."""
        self.settings = settings
        self._owns_backend = backend is None
        self.backend = backend or ClickHouseBackend.from_settings(
            settings, "writer" if writes else "reader"
        )
        self.db = check_identifier(settings.clickhouse_database)
        self.sealed = settings.seal_events
        self.keystore: KeyStore | None = None
        sealed = None
        if self.sealed:  # status records are sealed events, opened to show them
            from careledger.keystore import open_keystore
            from verifiers.auditor.runner.sealed_store import sealed_status

            self.keystore = open_keystore(settings)
            sealed = sealed_status(self.keystore, "console")
        self.book = AlertBook(self.backend, self.db, sealed)

    def __enter__(self) -> ConsoleData:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.keystore is not None:
            self.keystore.close()
        if self._owns_backend:
            self.backend.close()

    def sealed_access(self, system: str) -> SealedAccess | None:
        """How a patient's view opens a sealed ledger (None in clear)."""
        if self.keystore is None:
            return None
        from careledger.keys import load_public_keys

        registrars = tuple(load_public_keys(self.settings.trusted_registrar_keys))
        return SealedAccess(
            self.keystore, registrars, system, self.settings.reference_patient_system
        )

    @property
    def store(self) -> ChainStore:
        return ChainStore.for_settings(self.backend, self.settings)

    # ------------------------------------------------------------------ alerts
    def alerts(self, f: AlertFilter) -> tuple[list[dict[str, Any]], int]:
        """The alerts matching ``f``, in its order, at most ``f.limit``; and how many
        matched."""
        alerts = self.book.matching(
            rule=f.rule, actor=f.actor, start=f.start, end=f.end, patient_ref=f.patient_ref
        )
        view = status_view(self.book)
        out = []
        for a in alerts:
            status = view.of(a["alert_id"])
            a = _with_status(a, status)
            a["assigned_to"] = assignee(status.changes)  # the ledgered changes only
            out.append(a)
        if f.status:
            out = [a for a in out if a["status"] == f.status]
        staff = self.directory([a["actor_id"] for a in out])
        for a in out:
            entry = staff.get(a["actor_id"])
            a["actor_name"] = entry.name if entry else None
            a["department"] = entry.department if entry else None
        if f.department:
            out = [a for a in out if a["department"] == f.department]
        matching = len(out)
        return sort_alerts(out, f.sort)[: max(0, f.limit)], matching

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        alert = self.book.alert(alert_id)
        if alert is None:
            return None
        view = status_view(self.book, [alert_id]).of(alert_id)
        alert = _with_status(alert, view)
        alert["status_history"] = list(view.changes)  # each with where it is ledgered
        alert["assigned_to"] = assignee(view.changes)
        entry = self.directory([alert["actor_id"]]).get(alert["actor_id"])
        alert["actor_name"] = entry.name if entry else None
        alert["department"] = entry.department if entry else None
        return alert

    def rules(self) -> list[str]:
        return sorted(
            _text(r[0]) for r in self.backend.execute(f"SELECT DISTINCT rule FROM {self.db}.alerts")
        )

    def directory(self, actor_ids: Sequence[str]) -> dict[str, StaffEntry]:
        if self.sealed:  # actors are pseudonyms; their directory records stay sealed
            return {}
        return staff_directory(self.store, actor_ids, _now())

    def departments(self) -> list[str]:
        actors = [
            _text(r[0])
            for r in self.backend.execute(f"SELECT DISTINCT actor_id FROM {self.db}.alerts")
        ]
        return sorted({e.department for e in self.directory(actors).values()})

    # ------------------------------------------------------------------ people
    def actor_accesses(self, actor_id: str, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """How many committed accesses the actor made, and the newest ``limit``."""
        total = self.backend.execute(
            f"SELECT count() FROM {self.db}.access_events WHERE actor_id = %(a)s "
            "AND source_system != %(console)s",
            {"a": actor_id, "console": CONSOLE_SOURCE_SYSTEM},
        )
        rows = self.backend.execute(
            f"SELECT occurred_at, patient_id, action, outcome, source_system, chain_id, height "
            f"FROM {self.db}.access_events WHERE actor_id = %(a)s AND source_system != "
            "%(console)s ORDER BY occurred_at DESC LIMIT %(n)s",
            {"a": actor_id, "console": CONSOLE_SOURCE_SYSTEM, "n": limit},
        )
        salt = None if self.sealed else self._salt()
        return int(total[0][0]) if total else 0, [
            {
                "occurred_at": _text(r[0]),
                # pseudonyms only: the actor view is not a patient view (a sealed
                # ledger's column is the patient's pseudonym already)
                "patient_ref": _text(r[1])
                if self.sealed
                else (patient_pseudonym(_text(r[1]), salt) if salt else "-"),
                "action": _text(r[2]),
                "outcome": int(r[3]),
                "source_system": _text(r[4]),
                "where": f"{_text(r[5])}@{int(r[6])}",
            }
            for r in rows
        ]

    def _salt(self) -> str | None:
        from verifiers.auditor.runner.store import SaltError, load_salt

        try:
            return load_salt(self.settings)
        except (SaltError, OSError):
            return None

    def pseudonym_of(self, patient_id: str, system: str = "") -> str | None:
        """The patient's pseudonym in alerts (None: no salt readable here; on a sealed
        ledger, no data key for the patient under ``system``)."""
        salt = self._salt()
        if salt is None:
            return None
        if self.keystore is not None:  # the auditor's pseudonym of the ledger's
            key = self.keystore.data_key(self.keystore.lookup(system, patient_id), "console")
            return None if key is None else patient_pseudonym(patient_ref(key.key), salt)
        return patient_pseudonym(patient_id, salt)

    def reidentify(self, pseudonym: str) -> tuple[str, str] | None:
        """The patient (id, system) whose pseudonym is ``pseudonym``, among the patients
        of committed accesses, or None. On a sealed ledger: one of their committed
        accesses opened (unwrap counted under ``reidentify``); the caller ledgers the
        re-identification before it shows anything."""
        salt = self._salt()
        if salt is None:
            return None
        if self.keystore is not None:
            return self._reidentify_sealed(pseudonym, salt)
        for (pid,) in self.backend.execute(
            f"SELECT DISTINCT patient_id FROM {self.db}.access_events WHERE patient_id != '-'"
        ):
            patient = _text(pid)
            if patient_pseudonym(patient, salt) == pseudonym:
                return patient, ""
        return None

    def _reidentify_sealed(self, pseudonym: str, salt: str) -> tuple[str, str] | None:
        """A sealed ledger's alerts name a patient by the auditor's pseudonym of the
        ledger's (``patient_pseudonym(patient_ref, salt)``): the alerts' committed
        accesses are opened until one is of that patient."""
        from verifiers.auditor.runner.sealed_store import SealedEventOpener

        assert self.keystore is not None
        ids = sorted({i for a in self.book.matching(patient_ref=pseudonym) for i in a["event_ids"]})
        if not ids:
            return None
        opener = SealedEventOpener(self.keystore, "reidentify")
        rows = self.backend.execute(
            f"SELECT canonical, sealed, data_key_id FROM {self.db}.access_events "
            "WHERE event_id IN %(ids)s AND (chain_id, height, block_hash) IN "
            f"(SELECT chain_id, height, block_hash FROM {self.db}.blocks)",
            {"ids": tuple(ids)},
        )
        for canonical, sealed, key_id in rows:
            event = opener(bytes(canonical), _text(sealed), _text(key_id))
            if event is not None and _is_of(event, pseudonym, salt, self.keystore):
                return event.patient.id, event.patient.system or ""
        return None

    @staticmethod
    def patient_id(text: str) -> str:
        return normalise_identifier(text.strip())

    # ------------------------------------------------------------------ charts
    def alerts_per_rule_per_day(self, days: int = 30) -> tuple[list[str], dict[str, list[int]]]:
        rows = self.backend.execute(
            f"SELECT substring(first_at, 1, 10) AS day, rule, count() FROM {self.db}.alerts "
            "FINAL GROUP BY day, rule ORDER BY day"
        )
        counts: dict[tuple[str, str], int] = {(_text(d), _text(r)): int(n) for d, r, n in rows}
        day_list = sorted({d for d, _ in counts})[-days:]
        rules = sorted({r for _, r in counts})
        return day_list, {r: [counts.get((d, r), 0) for d in day_list] for r in rules}

    def accesses_per_hour(self) -> list[int]:
        rows = self.backend.execute(
            f"SELECT toUInt8(substring(occurred_at, 12, 2)) AS h, count() FROM "
            f"{self.db}.access_events WHERE source_system != %(console)s AND patient_id != '-' "
            "GROUP BY h",
            {"console": CONSOLE_SOURCE_SYSTEM},
        )
        hours = [0] * 24
        for h, n in rows:
            if 0 <= int(h) < 24:
                hours[int(h)] = int(n)
        return hours

    def verification_history(self, limit: int = 30) -> list[dict[str, Any]]:
        rows = self.backend.execute(
            f"SELECT finished_at, mode, result, findings, chains, events, summary FROM "
            f"{self.db}.verification_runs ORDER BY finished_at DESC LIMIT %(n)s",
            {"n": limit},
        )
        out = []
        for r in reversed(rows):
            try:
                summary = json.loads(_text(r[6]))
            except ValueError:  # cut at its limit: the columns still say the result
                summary = {}
            out.append(
                {
                    "finished_at": _text(r[0]),
                    "mode": _text(r[1]),
                    "result": _text(r[2]),
                    "findings": int(r[3]),
                    "chains": int(r[4]),
                    "events": int(r[5]),
                    "findings_by_code": summary.get("findings_by_code") or {},
                    "witnessing": summary.get("witnessing"),
                }
            )
        return out
