"""Rotating the processor's key, ledgered (ADR 0015), end to end on the real stack.

``careledger keygen --rotate-processor`` puts a new block-signing key in place and ledgers
the rotation as registrar-signed key events on the sources topic. Blocks signed before
the rotation keep verifying under the old key; the processor refuses to start with the
retired key; and a block the retired key signs after the rotation (whoever kept a copy of
it, even backdating the block's time) is a finding.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.kafka.producer import AccessEventProducer
from careledger.keys import load_signing_key
from careledger.storage.store import ChainStore
from careledger_core.signing import format_public_key
from careledger_core.source import seconds_of
from processors.chainer import PartitionChain
from producers.simulator import HospitalModel, simulate
from tests.integration.pipeline import (
    committed_event_count,
    processor_settings,
    run_cli,
    start_processor,
    stop,
    store_for,
    wait_until,
    with_keys,
    with_source,
)

pytestmark = pytest.mark.integration


def _chain_events(settings: Settings, store: ChainStore, seed: int, total: int, log: Path) -> None:
    with AccessEventProducer(settings) as producer:
        for e in simulate(HospitalModel(staff=40, patients=150, seed=seed), 10, seed=seed):
            producer.send(e)
        producer.flush()
    proc = start_processor(settings, log)
    try:
        wait_until(lambda: committed_event_count(store) >= total, 120, what=f"{total} chained")
        time.sleep(1.0)  # the sources chain (key events) has its blocks too
    finally:
        stop(proc)


def _verify(settings: Settings, *trusted: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = run_cli(settings.replace(trusted_keys=trusted), "verify", "--json")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def test_blocks_before_and_after_a_rotation_verify_and_the_retired_key_cannot_sign_again(
    isolated: Settings, tmp_path: Path
) -> None:
    s = with_source(with_keys(isolated, tmp_path), tmp_path, source_id="ehr-main")
    settings = processor_settings(s, require_source_signatures=True)
    assert settings.signing_key is not None
    key_path = settings.signing_key
    store = store_for(settings)
    _chain_events(settings, store, 71, 10, tmp_path / "processor-1.log")
    old = load_signing_key(key_path, env={})
    stolen = tmp_path / "attacker" / "old.key"  # someone kept a copy of the old key
    stolen.parent.mkdir()
    shutil.copy(key_path, stolen)

    out = run_cli(settings, "keygen", "--rotate-processor")
    assert out.returncode == 0, out.stdout + out.stderr
    new = load_signing_key(key_path, env={})
    assert new.key_id != old.key_id
    assert f"retired processor key {old.key_id}" in out.stdout
    assert "careledger-ed25519-private" not in out.stdout + out.stderr
    retired_pub = Path(f"{key_path}.retired-{old.key_id}.pub")
    assert retired_pub.read_text().strip() == format_public_key(old.public_key)
    assert Path(f"{key_path}.pub").read_text().strip() == format_public_key(new.public_key)
    rotated_at = next(
        line.split(" from ")[1].split(" ")[0]
        for line in out.stdout.splitlines()
        if line.startswith("retired processor key")
    )
    # the processor refuses to sign with the retired key (its last line says why)
    refused = run_cli(settings.replace(signing_key=stolen), "process")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("careledger process: "), refused.stderr[-2000:]
    assert f"signing key {old.key_id} is retired" in line and "CARELEDGER_SIGNING_KEY" in line

    _chain_events(settings, store, 72, 20, tmp_path / "processor-2.log")
    signers = dict(
        store.backend.execute(f"SELECT key_id, count() FROM {store.db}.blocks GROUP BY key_id", {})
    )
    assert {k.decode() for k in signers} == {old.key_id, new.key_id}
    times = store.backend.execute(
        f"SELECT key_id, max(created_at), min(created_at) FROM {store.db}.blocks GROUP BY key_id"
    )
    by_key = {k.decode(): (hi.decode(), lo.decode()) for k, hi, lo in times}
    assert by_key[old.key_id][0] < rotated_at <= by_key[new.key_id][1]

    trusted = (f"{key_path}.pub", str(retired_pub))
    code, report = _verify(settings, *trusted)
    assert code == 0, [f for f in report["findings"]][:5]
    # the old blocks need the old key: without it they are not vouched for
    code, report = _verify(settings, f"{key_path}.pub")
    assert code == 1 and {f["code"] for f in report["findings"]} >= {"KEY_UNKNOWN"}

    # --- the attack: the copy of the retired key signs new blocks on top of a chain,
    # one stamped now, one backdated to before the rotation
    chain_id = next(
        c.decode()
        for (c,) in store.backend.execute(
            f"SELECT chain_id FROM {store.db}.blocks WHERE key_id = %(k)s "
            "AND chain_id LIKE %(t)s LIMIT 1",
            {"k": new.key_id, "t": f"%/{settings.topic_events}/%"},
        )
    )
    head = store.head(chain_id)
    assert head is not None
    forger = load_signing_key(stolen, env={})
    chain = PartitionChain.resume(chain_id, head, settings.max_event_bytes)
    forged = []
    for when in (time.time(), seconds_of(rotated_at) - 3600):
        assert chain.next_offset is not None
        chain.accept_gap(chain.next_offset + 1)  # an offset "absent from Kafka"
        block = chain.seal(forger, when)
        assert block is not None
        forged.append(block)
    store.write_blocks(forged)
    code, report = _verify(settings, *trusted)
    assert code == 1
    found = [f for f in report["findings"] if f["code"] == "BLOCK_KEY_NOT_CURRENT"]
    assert [(f["chain_id"], f["height"]) for f in found] == [
        (chain_id, head.height + 1),
        (chain_id, head.height + 2),
    ]
    assert found[0]["details"]["status"] == "retired"
    assert found[1]["details"]["successor_key_id"] == new.key_id
    assert {f["code"] for f in report["findings"]} == {"BLOCK_KEY_NOT_CURRENT"}, report["findings"]
