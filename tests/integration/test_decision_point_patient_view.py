"""``careledger patient-view`` on the real stack: the consents in force now and their
history, who may see the record and why, the decision point's decisions and who did
see it, every line with a proof that checks offline, and a doctored line that fails."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.keys import load_public_keys
from careledger.processes import run_cli
from careledger_core.event import event_from_dict
from careledger_core.signing import TrustedKeys
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
)
from tests.integration.test_decision_point_stack import (
    T_V1,
    decide,
    ledger_consent,
    wait_replayed,
)
from verifiers.reports.patient_view import verify_view

pytestmark = pytest.mark.integration


def access(actor: str) -> Any:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 5))
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": str(uuid.uuid4()),
            "occurred_at": now,
            "recorded_at": now,
            "event_type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
            },
            "action": "R",
            "outcome": 0,
            "purpose_of_use": ["TREAT"],
            "actor": {"id": actor, "roles": ["doctor"], "is_requestor": True},
            "source": {"system": "ehr", "type": 4},
            "patient": {"id": "p-1"},
            "object": {"type": "Observation", "id": "obs-1"},
        }
    )


def test_patient_view_with_proofs(isolated: Settings, tmp_path: Path) -> None:
    settings = processor_settings(with_keys(isolated, tmp_path))
    proc = start_processor(settings, tmp_path / "processor.log")
    try:
        ledger_consent(settings, 1, "active", T_V1)
        decision = decide(settings, "dr-a", "--purpose", "TREAT")
        with AccessEventProducer(settings) as producer:
            producer.send(access("dr-a"))
            assert producer.flush().ok
        store = store_for(settings)
        # the access, the decision's event: both chained
        wait_until(lambda: committed_event_count(store) >= 2, 90, what="events chained")
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 1))
        ledger_consent(settings, 2, "inactive", now)
        wait_replayed(settings, 1)
        result = run_cli(settings, "patient-view", "--patient", "p-1", "--format", "json")
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        text = run_cli(settings, "patient-view", "--patient", "p-1")
        assert text.returncode == 0 and "Who did see the record" in text.stdout
    finally:
        stop(proc)

    # history: granted, then revoked (in force now: none)
    assert [(c["version"], c["change"]) for c in doc["consents"]] == [
        (1, "granted"),
        (2, "revoked"),
    ]
    assert not any(c["in_force_now"] for c in doc["consents"])
    assert doc["may_see_now"] == []
    # the decision point's decision, citing the consent version and provision
    [d] = doc["decisions"]
    assert d["decision_id"] == decision["decision_id"] and d["outcome"] == "permit"
    assert d["consent"]["version"] == 1 and d["provision_path"] == [0]
    # who did see it: the access (the decision's own event is about no patient)
    assert [a["actor_id"] for a in doc["accesses"]["lines"]] == ["dr-a"]
    # every line proves offline with only the processor's public key
    trusted = TrustedKeys(load_public_keys(settings.trusted_keys))
    assert verify_view(doc, trusted) == []
    path = tmp_path / "view.json"
    path.write_text(json.dumps(doc))
    keys = list(settings.trusted_keys)
    ok = run_cli(
        settings,
        "patient-view",
        "--verify",
        str(path),
        *[arg for k in keys for arg in ("--trusted-key", k)],
    )
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stdout + ok.stderr
    # a doctored line fails: the revocation shown as still active, a decision turned
    doctored = json.loads(json.dumps(doc))
    doctored["consents"][1]["status"] = "active"
    doctored["decisions"][0]["outcome"] = "deny"
    failures = verify_view(doctored, trusted)
    assert any(f.startswith("consents[1]") for f in failures)
    assert any(f.startswith("decisions[0]") for f in failures)
    forged = json.loads(json.dumps(doc))
    forged["consents"][0]["proof"]["audit_path"] = ["00" * 32]
    assert verify_view(forged, trusted)
