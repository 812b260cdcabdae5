"""A patient's consent, as a hospital sends it, decides: issue 11 end to end.

HL7's published R4 opt-out (``consent-example-Out``: "P. van de Heuvel wishes to have no
data at the Burgers University Medical Center available for normal treatment use"),
byte for byte, is POSTed to the real gateway by an authenticated sender; a doctor's read
of that patient's record arrives afterwards as a FHIR AuditEvent. Through the real
Kafka, processor and ClickHouse:

* the auditor raises a CONSENT_DENIED alert that names the consent version and the
  deciding provision;
* the decision point, asked the same question, denies with the same consent and
  provision, and its answer is ledgered and replays identically;
* ``careledger verify`` (integrity, the auditor's rows, the decision replays) is intact.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from tests.integration.pipeline import (
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
)
from tests.integration.test_consent_gateway import OUT_JSON, _signing_gateway, send
from tests.integration.test_gateway import r4_event

pytestmark = pytest.mark.integration


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_published_opt_out_sent_to_the_gateway_alerts_and_decides_alike(
    isolated: Settings, tmp_path: Path
) -> None:
    gateway = _signing_gateway(
        isolated.replace(audit_salt="e2e-consent-salt-of-the-tests"), tmp_path
    )
    settings = processor_settings(gateway.settings)
    published = OUT_JSON.read_bytes()
    patient = json.loads(published)["patient"]["reference"].split("/")[-1]
    assert patient == "f001"
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        r = send(gateway, "POST", "/Consent", published)
        assert r.status_code == 201, r.text
        consent_version = int(r.headers["etag"].split('"')[1])

        read_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
        event: dict[str, Any] = r4_event(patient)
        event["period"] = {"start": _iso(read_at)}
        event["recorded"] = _iso(read_at)
        r = send(gateway, "POST", "/AuditEvent", json.dumps(event).encode())
        assert r.status_code == 201, r.text

        store = store_for(settings)

        def chained() -> bool:
            consents = store.backend.execute(
                f"SELECT count() FROM {store.db}.reference_records WHERE kind = 'consent' "
                f"AND (chain_id, height) IN (SELECT chain_id, height FROM {store.db}.blocks)"
            )
            events = store.backend.execute(
                f"SELECT count() FROM {store.db}.access_events WHERE patient_id = %(p)s "
                f"AND (chain_id, height) IN (SELECT chain_id, height FROM {store.db}.blocks)",
                {"p": patient},
            )
            return int(consents[0][0]) == 1 and int(events[0][0]) == 1

        wait_until(chained, 120, what="the consent and the access chained")

        day = dt.timedelta(days=1)
        audited = run_cli(
            settings,
            "audit",
            "--from",
            (read_at - day).date().isoformat(),
            "--to",
            (read_at + day).date().isoformat(),
            "--json",
            timeout=600,
        )
        assert audited.returncode == 0, audited.stdout + audited.stderr
        rows = store.backend.execute(
            f"SELECT rule, evidence FROM {store.db}.alerts FINAL WHERE rule = 'CONSENT_DENIED'"
        )
        assert len(rows) == 1, rows
        sample = json.loads(rows[0][1])["samples"][0]
        consent_id = f"ehr-east/{json.loads(published)['id']}"
        assert sample["consent_record"] == consent_id, sample
        assert sample["consent_version"] == consent_version, sample
        assert sample["provision_path"] == [0], sample

        decided = run_cli(
            settings,
            "consent",
            "decide",
            "--patient",
            patient,
            "--actor",
            "dr.jones",
            "--purpose",
            "TREAT",
            "--action",
            "R",
            "--json",
        )
        assert decided.returncode == 0, decided.stdout + decided.stderr
        decision = json.loads(decided.stdout.strip().splitlines()[-1])["decision"]
        answer = decision["answer"]
        assert answer["outcome"] == "deny", answer
        assert answer["consent"]["record_id"] == consent_id
        assert answer["consent"]["version"] == consent_version
        assert answer["provision_path"] == [0], "the provision the auditor cited"

        def replayed() -> bool:
            out = run_cli(settings, "consent", "replay", decision["decision_id"], "--json")
            return out.returncode == 0

        wait_until(replayed, 120, interval=1.0, what="the decision ledgered and replayed")

        verified = run_cli(settings, "verify", "--json", "--audit-settle", "0")
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        doc = json.loads(verified.stdout.strip().splitlines()[-1])
        assert doc["audit"]["consent_decisions"]["identical"] == 1, doc["audit"]
        assert doc["audit"]["decisions"] >= 1, doc["audit"]
    finally:
        stop(proc)
        stop(gateway.proc)
