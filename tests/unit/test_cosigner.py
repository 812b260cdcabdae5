"""The log's witness client (``processors.cosigner``, ADR 0018) against real witness
logic (``witness.service.WitnessService``, in process: no HTTP) over a stored chain
(the fake ``blocks`` table of ``test_tree_check``), and the witnesses file.

The end-to-end path (processes, Kafka, ClickHouse, litewitness) is in
tests/integration/test_witnessed.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.witnesses import WitnessesConfigError, WitnessSet, parse_witnesses
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.checkpoint import Checkpoint, format_checkpoint, sign_note
from careledger_core.cosignature import WitnessKey, check_quorum, cosign
from careledger_core.merkle import MerkleTree
from careledger_core.signing import SigningKey
from careledger_core.witness import WitnessAnswer, read_add_checkpoint_response
from processors.cosigner import ChainLeaves, Cosigner
from tests.unit.test_tree_check import FakeStore, chain_rows, hashes
from tests.witness_support import seeded_key
from verifiers.integrity.checkpoint_log import CheckpointLog
from verifiers.integrity.witnessing import assess_witnessing
from witness.config import WitnessConfig
from witness.service import WitnessService

CHAIN = "careledger.local/careledger.access-events/0"
LOG_KEY = SigningKey.from_seed(hashlib.sha256(b"cosigner test log").digest())
NAMES = ("a.example/w", "b.example/w", "c.example/w")


def note(values: list[bytes], size: int, key: SigningKey = LOG_KEY) -> str:
    cp = Checkpoint(
        CHAIN,
        size,
        ChainTree.of_blocks(values[:size]).root,
        (f"careledger-head {values[size - 1].hex()}",),
    )
    return sign_note(format_checkpoint(cp), CHAIN, key)


class Witnesses:
    """Three real witness services answering in process, some of them "down"."""

    def __init__(self, tmp_path: Path) -> None:
        self.keys = {n: seeded_key(n) for n in NAMES}
        self.down: set[str] = set()
        self.asked: list[tuple[str, int]] = []  # (witness, old size) per request
        self.services = {
            n: WitnessService(
                WitnessConfig(
                    name=n,
                    key=self.keys[n],
                    logs={CHAIN: {CHAIN: LOG_KEY.public_key}},
                    state_dir=tmp_path / n.replace("/", "_"),
                    host="127.0.0.1",
                    port=0,
                    max_request_bytes=65536,
                ),
                clock=lambda: 1_700_000_000,
            )
            for n in NAMES
        }
        self.set = WitnessSet(
            tuple(_witness(n, self.keys[n]) for n in NAMES), quorum=2, max_age_s=60
        )

    def ask(self, url: str, body: bytes, timeout: float) -> WitnessAnswer:
        from careledger.witness_client import WitnessUnreachable

        name = url.removeprefix("http://")
        if name in self.down:
            raise WitnessUnreachable(f"witness {name}: connection refused")
        self.asked.append((name, int(body.split(b"\n", 1)[0].split()[1])))
        reply = self.services[name].add_checkpoint(body)
        return read_add_checkpoint_response(reply.status, reply.content_type, reply.body)


def _witness(name: str, key: SigningKey) -> Any:
    from careledger.witnesses import Witness

    return Witness(WitnessKey(name, key.public_key), f"http://{name}")


@pytest.fixture
def witnesses(tmp_path: Path) -> Witnesses:
    return Witnesses(tmp_path)


def cosigner(w: Witnesses, values: list[bytes]) -> Cosigner:
    return Cosigner(w.set, FakeStore(chain_rows(values)), ask=w.ask)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the witness client


def test_each_witness_is_asked_from_the_size_it_cosigned(witnesses: Witnesses) -> None:
    values = hashes(40)
    c = cosigner(witnesses, values)
    for size in (3, 10, 11, 40):
        assert c.offer(note(values, size))
        [result] = c.round()
        assert result.quorum_met and set(result.cosigned_by) == set(NAMES)
        assert check_quorum(result.note, witnesses.set.policy).met
    # first request from 0 (witness state empty), then from each previous size
    olds = [old for name, old in witnesses.asked if name == NAMES[0]]
    assert olds == [0, 3, 10, 11]


def test_a_restarted_cosigner_learns_the_witness_size_from_its_409(witnesses: Witnesses) -> None:
    values = hashes(30)
    first = cosigner(witnesses, values)
    first.offer(note(values, 12))
    assert first.round()[0].quorum_met
    second = cosigner(witnesses, values)  # knows nothing: asks from 0, gets 409 12
    second.offer(note(values, 30))
    [result] = second.round()
    assert result.quorum_met and not result.refused
    assert [old for name, old in witnesses.asked if name == NAMES[1]] == [0, 0, 12]


def test_one_witness_down_still_reaches_the_quorum(witnesses: Witnesses) -> None:
    values = hashes(8)
    witnesses.down.add(NAMES[2])
    c = cosigner(witnesses, values)
    c.offer(note(values, 8))
    [result] = c.round()
    assert result.quorum_met and set(result.cosigned_by) == set(NAMES[:2])
    assert result.refused[NAMES[2]].startswith("unreachable")


def test_a_rewritten_history_is_refused_by_every_witness(witnesses: Witnesses) -> None:
    values = hashes(20)
    c = cosigner(witnesses, values)
    c.offer(note(values, 20))
    assert c.round()[0].quorum_met
    # the key holder rewrites block 10 onwards and grows the chain
    rewritten = values[:10] + hashes(15, b"rewritten")
    attacker = cosigner(witnesses, rewritten)
    attacker.offer(note(rewritten, 25))
    [result] = attacker.round()
    assert not result.quorum_met and result.cosigned_by == ()
    assert set(result.refused) == set(NAMES)
    assert all("conflict" in r or "422" in r for r in result.refused.values()), result.refused


def test_a_checkpoint_the_store_does_not_match_is_never_sent(witnesses: Witnesses) -> None:
    values = hashes(10)
    c = cosigner(witnesses, values[:9] + hashes(1, b"other head"))
    c.offer(note(values, 10))
    assert c.round() == [] and witnesses.asked == []


def test_cosigned_republications_and_older_sizes_are_not_offered_again(
    witnesses: Witnesses,
) -> None:
    values = hashes(10)
    c = cosigner(witnesses, values)
    assert c.offer(note(values, 10))
    result = c.round()[0]
    assert not c.offer(result.note)  # carries cosignatures: ours
    assert not c.offer(note(values, 9))  # older
    assert not c.offer("not a note")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.data())
def test_chain_leaves_proofs_equal_the_full_tree_proofs(n: int, data: st.DataObject) -> None:
    values = hashes(n)
    leaves = ChainLeaves(FakeStore(chain_rows(values)), CHAIN)  # type: ignore[arg-type]
    full = [block_leaf_hash(v) for v in values]
    grown = 0
    for size in sorted(set(data.draw(st.lists(st.integers(1, n), min_size=1, max_size=5)))):
        leaves.grow(size, values[size - 1])
        grown = size
        old = data.draw(st.integers(leaves.start, size))
        assert leaves.proof(old, size) == MerkleTree(full[:size]).consistency_proof(old)
        if data.draw(st.booleans()):
            leaves.trim(old)
    assert leaves.tree_at(grown).root == MerkleTree(full[:grown]).root


# ------------------------------------------------------------------ the witnesses file


def test_witnesses_file_round_trip() -> None:
    keys = [seeded_key(n) for n in NAMES]
    text = "quorum = 2\nmax_age_s = 120\n" + "".join(
        f'[[witness]]\nname = "{n}"\nkey = "{WitnessKey(n, k.public_key).vkey}"\n'
        f'url = "http://127.0.0.1:{17380 + i}"\n'
        for i, (n, k) in enumerate(zip(NAMES, keys, strict=True))
    )
    ws = parse_witnesses(text)
    assert (ws.quorum, ws.max_age_s, len(ws.reachable)) == (2, 120, 3)
    assert ws.policy.witnesses[1] == WitnessKey(NAMES[1], keys[1].public_key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quorum = 2\n", "no [[witness]] entries"),
        ('quorum = 4\n[[witness]]\nname = "a"\nkey = "ed25519:' + "A" * 43 + '="\n', "quorum"),
        ('[[witness]]\nname = "a"\nkey = "nonsense"\n', "key 'nonsense'"),
        ('quorum = 1\n[[witness]]\nname = "a"\nkey = "x"\nport = 3\n', "unknown key(s) ['port']"),
        ('quorum = 1\nextra = 1\n[[witness]]\nname = "a"\nkey = "x"\n', "unknown key(s)"),
        ("quorum = [", "not valid TOML"),
    ],
)
def test_witnesses_file_errors_name_what_to_fix(text: str, expected: str) -> None:
    with pytest.raises(WitnessesConfigError, match=re.escape(expected)):
        parse_witnesses(text, "w.toml")


def test_a_vkey_under_another_name_and_a_url_with_a_path_are_refused() -> None:
    vkey = WitnessKey("b.example/w", seeded_key("b").public_key).vkey
    with pytest.raises(WitnessesConfigError, match="the vkey names"):
        parse_witnesses(f'quorum = 1\n[[witness]]\nname = "a"\nkey = "{vkey}"\n')
    with pytest.raises(WitnessesConfigError, match="without a path"):
        parse_witnesses(
            f'quorum = 1\n[[witness]]\nname = "b.example/w"\nkey = "{vkey}"\n'
            'url = "http://h:1/add-checkpoint"\n'
        )


# ------------------------------------------------------------------ the verdict


class _TimesBackend:
    """``min/max(created_at)`` of the blocks above a size, per chain."""

    def __init__(self, times: dict[str, list[str]]) -> None:
        self.times = times

    def execute(self, sql: str, params: dict[str, Any]) -> list[tuple[str, str]]:
        assert "min(created_at)" in sql
        rows = self.times[params["c"]][params["h"] :]
        return [(min(rows), max(rows))] if rows else [("", "")]


def _store(times: dict[str, list[str]]) -> Any:
    store = FakeStore([])
    store.backend = _TimesBackend(times)  # type: ignore[assignment]
    return store


NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _at(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_witnessed_pending_and_not_yet_witnessed(witnesses: Witnesses) -> None:
    times = {
        "covered": [_at(900), _at(800)],
        "young": [_at(900), _at(30), _at(10)],  # blocks 1, 2 beyond the quorum: 30 s old
        "late": [_at(900), _at(120), _at(10)],  # block 1 beyond the quorum: 120 s old
        "future": [_at(900), _at(-3600)],  # dated an hour ahead: due at once
    }
    sizes = {c: len(t) for c, t in times.items()}
    quorum = {c: (1, NAMES[:2]) for c in ("young", "late", "future")}
    quorum["covered"] = (2, NAMES)
    report = assess_witnessing(_store(times), witnesses.set, sizes, quorum, now=NOW)
    status = {c.chain: c.status for c in report.chains}
    assert status == {
        "covered": "witnessed",
        "young": "pending",
        "late": "not_witnessed",
        "future": "not_witnessed",
    }
    assert report.status == "not_witnessed"
    assert {c.chain for c in report.not_witnessed} == {"late", "future"}


def test_cosignature_union_over_copies_counts_once_per_witness(witnesses: Witnesses) -> None:
    values = hashes(5)
    n = note(values, 5)
    body = n[: n.rfind("\n\n") + 1]
    lines = {name: cosign(body, name, witnesses.keys[name], 1_700_000_000).line for name in NAMES}
    log = CheckpointLog("careledger.local", (LOG_KEY.public_key,), policy=witnesses.set.policy)
    # two copies, each cosigned by one witness (e.g. served by each witness): quorum 2
    log.add_witnessed(n.rstrip("\n") + "\n" + lines[NAMES[0]] + "\n", NAMES[0])
    assert log.witnessed() == {}
    log.add_witnessed(n.rstrip("\n") + "\n" + lines[NAMES[0]] + "\n", NAMES[0])
    assert log.witnessed() == {}  # the same witness twice is still one
    log.add_witnessed(n.rstrip("\n") + "\n" + lines[NAMES[1]] + "\n", NAMES[1])
    seen, names = log.witnessed()[CHAIN]
    assert seen.size == 5 and set(names) == set(NAMES[:2])


def test_a_checkpoint_that_missed_the_quorum_is_asked_again_without_a_new_one(
    witnesses: Witnesses,
) -> None:
    """An idle chain must not stay unwitnessed because witnesses were down once: the
    checkpoint is asked again (only of the witnesses that did not cosign) until the
    quorum is reached, with no newer checkpoint needed."""
    values = hashes(12)
    witnesses.down.update(NAMES[1:])
    c = Cosigner(
        witnesses.set,
        FakeStore(chain_rows(values)),  # type: ignore[arg-type]
        ask=witnesses.ask,
        retry_after_s=0.0,
    )
    c.offer(note(values, 12))
    [first] = c.round()
    assert not first.quorum_met and first.cosigned_by == (NAMES[0],) and c.waiting == 1
    assert c.round()[0].cosigned_by == (NAMES[0],)  # still down: still waiting
    witnesses.down.clear()
    before = len(witnesses.asked)
    [again] = c.round()
    assert again.quorum_met and set(again.cosigned_by) == set(NAMES) and c.waiting == 0
    # witness 0 was not asked again: its cosignature from the first round was kept
    assert {name for name, _ in witnesses.asked[before:]} == set(NAMES[1:])
    assert c.round() == []  # nothing left to do
