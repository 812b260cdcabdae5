"""The privacy office's console on a sealed ledger (ADR 0037), driven through Starlette's
test client over the real ledger (Kafka, ClickHouse 18.16, the SoftHSM2 token): called
from ``test_sealed_pipeline.py`` on its populated, audited ledger, so that it costs the
pages only. The queue, a case, an actor and a pseudonym's page name no one; a
re-identification is ledgered (sealed) before the patient is shown; a patient's history
opens their accesses through the key store."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from careledger.config import Settings
from careledger.keystore import open_keystore
from careledger_core.event import AccessEvent
from careledger_core.sealing import patient_ref
from console.accounts import AccountStore, totp
from console.app import Console, create_app
from console.ledger import ConsoleLedger
from verifiers.auditor.alerts import patient_pseudonym
from verifiers.auditor.runner.store import load_salt

PASSWORD = "correct horse battery staple"


class _Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _refs(settings: Settings, patients: set[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The alerts' pseudonym (the auditor's, of the ledger's) -> (patient id, system) of
    ``patients`` (those with a data key)."""
    salt = load_salt(settings)
    out = {}
    with open_keystore(settings) as keys:
        for system, patient in patients:
            key = keys.data_key(keys.lookup(system, patient), "test")
            if key is not None:
                out[patient_pseudonym(patient_ref(key.key), salt)] = (patient, system)
    return out


def check_console(
    settings: Settings,
    tmp_path: Path,
    alerts: list[dict[str, Any]],
    worked_with: tuple[str, str],
    events: dict[str, AccessEvent],
    identifiers: set[bytes],
    erased: tuple[str, str],
) -> int:
    """Work the console's pages on the sealed ledger (``worked_with``: the alert the
    caller acknowledged and its note, which names a patient); returns how many accesses
    it ledgered (each a sealed access event the caller will find chained)."""
    worked, note = worked_with
    clock = _Clock()
    accounts = AccountStore(tmp_path / "console-accounts.json", clock=clock)
    accounts.add("dana", "privacy-officer", PASSWORD)
    ledger = ConsoleLedger(settings)
    console = Console(settings, accounts, ledger=ledger)
    client = TestClient(create_app(console), base_url="https://testserver")
    try:
        account = accounts.get("dana")
        assert account is not None
        code = totp(base64.b32decode(account.totp_secret), clock.now)
        signed_in = client.post(
            "/login",
            data={"name": "dana", "password": PASSWORD, "code": code},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303, signed_in.text
        shown: list[str] = []

        def page(path: str, **kw: Any) -> str:
            r = client.get(path, **kw) if not kw.get("data") else client.post(path, **kw)
            text: str = r.text
            assert r.status_code == 200, (path, r.status_code, text[-2000:])
            shown.append(text)
            return text

        # the queue and a worked case: pseudonyms, the ledgered status, no name
        queue = page("/alerts")
        assert f'href="/alerts/{worked}"' in queue
        case = page(f"/alerts/{worked}")
        # the reviewer and the note, opened from the sealed status event, for the office
        assert "acknowledged" in case and "privacy-officer-7" in case and note in case
        shown[-1] = case.replace(note, "")
        alert = next(a for a in alerts if a["alert_id"] == worked)
        page(f"/actors/{alert['actor_id']}")
        # a patient's pseudonym page, then a re-identification with a reason: ledgered
        # (a sealed access event of the console) before the patient is shown
        refs = _refs(settings, {(e.patient.system or "", e.patient.id) for e in events.values()})
        ref = next(
            a["patient_ref"]
            for a in alerts
            if a["patient_ref"] in refs and refs[a["patient_ref"]][0] != erased[0]
        )
        pseudonym_page = page(f"/patients/{ref}")
        token = re.search(r'name="csrf" value="([^"]+)"', pseudonym_page)
        assert token is not None
        sent = ledger.sent
        found = page(
            f"/patients/{ref}/reidentify",
            data={"csrf": token.group(1), "reason": "complaint from the patient, ticket 77"},
        )
        assert ledger.sent == sent + 2  # the re-identification, then the page it shows
        who, system = refs[ref]
        assert f"patient <strong>{who}</strong>" in found, found[-2000:]
        # their history, opened through the key store: every access to their record
        history = page("/history", params={"patient": who, "system": system})
        count = re.search(r'id="history-count">(\d+) access', history)
        assert count is not None
        mine = [e for e in events.values() if (e.patient.id, e.patient.system or "") == refs[ref]]
        assert int(count.group(1)) >= len(mine) > 0
        # nothing on the pages before the re-identification names anyone
        before = "\n".join(shown[:4])
        assert not [i for i in identifiers if i.decode() in before], "an identifier on a page"
        return ledger.sent
    finally:
        client.close()
        ledger.close()
