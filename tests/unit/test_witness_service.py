"""The witness wing without HTTP: configuration, the durable state, the protocol over it.

Attacks on the state: two requests racing to roll the witness back, a crash between
signing and committing, a rewrite of a cosigned root through SQL, evidence flooding by
replaying one conflicting checkpoint with varied junk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from careledger.config import load_settings
from careledger_core.witness import (
    Cosignature,
    EvidenceKind,
    WitnessKey,
    attach_cosignatures,
    format_add_checkpoint,
    verify_cosignature,
    verify_fork,
)
from tests.witness_support import TestLog, leaves, seeded_key, write_logs_file
from witness.config import WitnessConfig, WitnessConfigError, load_logs, load_witness
from witness.server import command_witness, configure_witness
from witness.service import WitnessService

ORIGIN = "careledger.test/careledger.access-events/0"
NAME = "hospital-b.example/witness"


@pytest.fixture
def lg() -> TestLog:
    log = TestLog(ORIGIN)
    log.grow(64)
    return log


def config_for(tmp_path: Path, lg: TestLog) -> WitnessConfig:
    return WitnessConfig(
        name=NAME,
        key=seeded_key("service witness"),
        logs={ORIGIN: {ORIGIN: lg.key.public_key}},
        state_dir=tmp_path / "state",
        host="127.0.0.1",
        port=0,
        max_request_bytes=65536,
    )


@pytest.fixture
def service(tmp_path: Path, lg: TestLog) -> WitnessService:
    return WitnessService(config_for(tmp_path, lg), clock=lambda: 1_700_000_000)


def head_size(service: WitnessService) -> int:
    head = service.store.head(ORIGIN)
    return head.size if head else 0


# ------------------------------------------------------------------ configuration


def write_key(path: Path, mode: int = 0o600) -> Path:
    from careledger_core.signing import format_private_key

    path.write_text(format_private_key(seeded_key("config witness")), encoding="ascii")
    os.chmod(path, mode)
    return path


def test_logs_file_takes_vkeys_literals_and_key_files(tmp_path: Path, lg: TestLog) -> None:
    other = TestLog("careledger.test/careledger.access-events/1", key=seeded_key("other log"))
    (tmp_path / "log.pub").write_text(lg.key_literal + "\n", encoding="ascii")
    (tmp_path / "logs.toml").write_text(
        f'[[log]]\norigins = ["{ORIGIN}", "{ORIGIN}x"]\nkeys = ["log.pub"]\n\n'
        f'[[log]]\norigin = "{other.origin}"\nkeys = ["{other.vkey}"]\n',
        encoding="utf-8",
    )
    logs = load_logs(tmp_path / "logs.toml")
    assert logs[ORIGIN] == {ORIGIN: lg.key.public_key}
    assert logs[ORIGIN + "x"] == {ORIGIN + "x": lg.key.public_key}
    assert logs[other.origin] == {other.origin: other.key.public_key}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no [[log]] entries"),
        ('[[log]]\norigin = "o"\n', "'keys' must be"),
        ('[[log]]\norigin = "o"\nkeys = ["ed25519:AAAA"]\n', "key 'ed25519:AAAA'"),
        ('[[log]]\norigin = "o"\nkeys = ["x+00000000+AQ=="]\n', "key 'x+00000000+AQ=='"),
        ('[[log]]\norigin = "o"\nkeyz = []\n', "unknown key(s) ['keyz']"),
        ('[[log]]\norigin = "o"\nkeys = ["nope.pub"]\n', "cannot read trusted key file"),
        ('[[log]]\norigins = ["o", "o"]\nkeys = ["ed25519:' + "A" * 43 + '="]\n', "listed twice"),
    ],
)
def test_logs_file_errors_name_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "logs.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(WitnessConfigError, match=r"logs\.toml") as info:
        load_logs(path)
    assert expected in str(info.value)


def test_settings_errors_name_the_setting(tmp_path: Path, lg: TestLog) -> None:
    logs = write_logs_file(tmp_path / "logs.toml", [lg])
    key = write_key(tmp_path / "w.key")
    base = {
        "CARELEDGER_RUN_DIR": str(tmp_path / "run"),
        "CARELEDGER_WITNESS_NAME": NAME,
        "CARELEDGER_WITNESS_SIGNING_KEY": str(key),
        "CARELEDGER_WITNESS_LOGS_FILE": str(logs),
    }
    assert load_witness(load_settings(env=base)).name == NAME
    for change, setting in [
        ({"CARELEDGER_WITNESS_NAME": ""}, "CARELEDGER_WITNESS_NAME"),
        ({"CARELEDGER_WITNESS_NAME": "a b"}, "CARELEDGER_WITNESS_NAME"),
        ({"CARELEDGER_WITNESS_LOGS_FILE": ""}, "CARELEDGER_WITNESS_LOGS_FILE"),
        ({"CARELEDGER_WITNESS_MAX_REQUEST_BYTES": "10"}, "CARELEDGER_WITNESS_MAX_REQUEST_BYTES"),
        (
            {"CARELEDGER_WITNESS_SIGNING_KEY": str(tmp_path / "no")},
            "CARELEDGER_WITNESS_SIGNING_KEY",
        ),
    ]:
        with pytest.raises(WitnessConfigError, match=setting):
            load_witness(load_settings(env={**base, **change}))


def test_a_key_readable_by_others_is_refused(tmp_path: Path, lg: TestLog) -> None:
    env = {
        "CARELEDGER_WITNESS_NAME": NAME,
        "CARELEDGER_WITNESS_SIGNING_KEY": str(write_key(tmp_path / "w.key", 0o644)),
        "CARELEDGER_WITNESS_LOGS_FILE": str(write_logs_file(tmp_path / "logs.toml", [lg])),
    }
    with pytest.raises(WitnessConfigError, match="chmod 600"):
        load_witness(load_settings(env=env))


def test_the_log_key_cannot_be_the_witness_key(tmp_path: Path) -> None:
    own = TestLog(ORIGIN, key=seeded_key("config witness"))
    env = {
        "CARELEDGER_WITNESS_NAME": NAME,
        "CARELEDGER_WITNESS_SIGNING_KEY": str(write_key(tmp_path / "w.key")),
        "CARELEDGER_WITNESS_LOGS_FILE": str(write_logs_file(tmp_path / "logs.toml", [own])),
    }
    with pytest.raises(WitnessConfigError, match="key of its own"):
        load_witness(load_settings(env=env))


def test_command_exits_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure_witness(parser)
    settings = load_settings(env={"CARELEDGER_RUN_DIR": str(tmp_path)})
    assert command_witness(parser.parse_args([]), settings) == 2
    assert "CARELEDGER_WITNESS_NAME" in capsys.readouterr().out
    assert command_witness(parser.parse_args(["--evidence"]), settings) == 2
    assert "CARELEDGER_WITNESS_STATE_DIR" in capsys.readouterr().out


# ------------------------------------------------------------------ the protocol


def test_cosigns_a_growing_log_and_serves_the_cosigned_checkpoint(
    service: WitnessService, lg: TestLog
) -> None:
    witness = WitnessKey(NAME, service.config.key.public_key)
    for old, new in [(0, 1), (1, 5), (5, 5), (5, 64)]:
        reply = service.add_checkpoint(lg.request(old, new))
        assert reply.status == 200, reply.body
        line = reply.body.decode()[:-1]
        verify_cosignature(lg.body(new), line, witness)
    import hashlib

    served = service.checkpoint(hashlib.sha256(ORIGIN.encode()).hexdigest())
    assert served.status == 200
    assert served.body.decode() == attach_cosignatures(lg.note(64), [line])
    assert service.checkpoint("0" * 64).status == 404


def test_concurrent_requests_cannot_roll_the_witness_back(
    service: WitnessService, lg: TestLog
) -> None:
    """C2SP's race: A (8 -> 20) and B (8 -> 40) both checked against size 8, B stored,
    then A stored, rolling back 20 leaves. Here only one of them can pass the check."""
    assert service.add_checkpoint(lg.request(0, 8)).status == 200
    for round_ in range(10):
        base = head_size(service)
        targets = [base + 1 + (i * 7 + round_) % (64 - base) for i in range(8)]
        targets = [min(t, 64) for t in targets]
        results: list[tuple[int, int]] = []
        barrier = threading.Barrier(len(targets))

        def go(
            target: int,
            base: int = base,
            barrier: threading.Barrier = barrier,
            results: list[tuple[int, int]] = results,
        ) -> None:
            barrier.wait()
            results.append((target, service.add_checkpoint(lg.request(base, target)).status))

        threads = [threading.Thread(target=go, args=(t,)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [t for t, status in results if status == 200]
        assert len(set(winners)) == 1, results  # the same size may win twice, nothing else
        assert head_size(service) == winners[0] >= base
        assert all(status in (200, 409) for _, status in results)
        if head_size(service) == 64:
            break


def test_a_crash_between_signing_and_commit_leaves_nothing(
    service: WitnessService, lg: TestLog
) -> None:
    assert service.add_checkpoint(lg.request(0, 8)).status == 200
    submission_sign = service._sign

    def crash(body: str) -> Cosignature:
        submission_sign(body)
        raise KeyboardInterrupt  # stands for SIGKILL after signing, before COMMIT

    service._sign = crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        service.add_checkpoint(lg.request(8, 20))
    service._sign = submission_sign  # type: ignore[method-assign]
    assert head_size(service) == 8
    assert service.store.cosigned_roots(ORIGIN).keys() == {8}
    assert service.add_checkpoint(lg.request(8, 20)).status == 200


def test_state_survives_reopening(tmp_path: Path, lg: TestLog) -> None:
    config = config_for(tmp_path, lg)
    first = WitnessService(config)
    assert first.add_checkpoint(lg.request(0, 30)).status == 200
    first.store.close()
    again = WitnessService(config)
    reply = again.add_checkpoint(lg.request(0, 10))
    assert (reply.status, reply.body, reply.content_type) == (409, b"30\n", "text/x.tlog.size")


def test_a_cosigned_root_cannot_be_changed_or_deleted_even_through_sql(
    service: WitnessService, lg: TestLog
) -> None:
    assert service.add_checkpoint(lg.request(0, 8)).status == 200
    db = sqlite3.connect(service.store.path)
    with pytest.raises(sqlite3.IntegrityError, match="never changes"):
        db.execute("UPDATE cosigned SET root = ? WHERE size = 8", (b"\0" * 32,))
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        db.execute("DELETE FROM cosigned")
    db.close()


# ------------------------------------------------------------------ evidence


def test_fork_evidence_is_kept_once_however_often_it_is_replayed(
    service: WitnessService, lg: TestLog
) -> None:
    assert service.add_checkpoint(lg.request(0, 20)).status == 200
    fork = lg.note(20, lg.leaves[:10] + leaves("fork", 10))
    for i in range(30):  # each time with another junk signature line appended
        noisy = attach_cosignatures(fork, [f"\u2014 junk{i}.example/w " + "A" * 102 + "=="])
        assert service.add_checkpoint(format_add_checkpoint(20, (), noisy)).status == 422
    [evidence] = service.store.evidence()
    assert evidence["kind"] == "fork" and evidence["seen"] == 30 and evidence["status"] == "open"
    keys = {ORIGIN: lg.key.public_key}
    assert verify_fork(evidence["cosigned_note"], evidence["presented_note"], keys) == 20


def test_a_replay_with_a_junk_proof_is_resolved_by_the_real_proof(
    service: WitnessService, lg: TestLog
) -> None:
    assert service.add_checkpoint(lg.request(0, 20)).status == 200
    junk = format_add_checkpoint(20, lg.proof(19, 30), lg.note(30))
    assert service.add_checkpoint(junk).status == 422
    assert [e["status"] for e in service.store.evidence()] == ["open"]
    assert service.add_checkpoint(lg.request(20, 30)).status == 200
    assert [e["status"] for e in service.store.evidence()] == ["resolved"]


def test_split_view_shown_to_one_witness_becomes_a_fork(
    service: WitnessService, lg: TestLog
) -> None:
    """The log shows the witness a rewritten size-40 checkpoint (no valid proof), then
    its public size-40 checkpoint: two log-signed checkpoints of one size."""
    assert service.add_checkpoint(lg.request(0, 20)).status == 200
    rewritten = lg.leaves[:12] + leaves("rewritten", 28)
    assert service.add_checkpoint(lg.request(20, 40, rewritten)).status == 422
    assert service.add_checkpoint(lg.request(20, 40)).status == 200
    kinds = {e["kind"]: e["status"] for e in service.store.evidence()}
    assert kinds == {EvidenceKind.INCONSISTENT.value: "fork", EvidenceKind.FORK.value: "open"}
    fork = next(e for e in service.store.evidence() if e["kind"] == "fork")
    assert verify_fork(fork["cosigned_note"], fork["presented_note"], {ORIGIN: lg.key.public_key})


def test_command_creates_its_key_prints_its_vkey_status_and_evidence(
    tmp_path: Path, lg: TestLog, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import json
    import stat

    from careledger.keys import load_private_key

    monkeypatch.delenv("CARELEDGER_WITNESS_SIGNING_KEY_TEXT", raising=False)
    parser = argparse.ArgumentParser()
    configure_witness(parser)
    key_path = tmp_path / "keys" / "witness.key"
    settings = load_settings(
        env={
            "CARELEDGER_RUN_DIR": str(tmp_path),
            "CARELEDGER_WITNESS_NAME": NAME,
            "CARELEDGER_WITNESS_LOGS_FILE": str(write_logs_file(tmp_path / "logs.toml", [lg])),
        }
    )
    assert command_witness(parser.parse_args(["--create-key", "--vkey"]), settings) == 0
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_private_key(key_path, text_env="-", what="k", setting="-")
    assert capsys.readouterr().out.strip() == WitnessKey(NAME, key.public_key).vkey
    # a second --create-key keeps the key it has
    assert command_witness(parser.parse_args(["--create-key", "--vkey"]), settings) == 0
    assert load_private_key(key_path, text_env="-", what="k", setting="-") == key
    capsys.readouterr()

    service = WitnessService(load_witness(settings))
    assert service.add_checkpoint(lg.request(0, 12)).status == 200
    fork = lg.leaves[:4] + leaves("fork", 8)
    assert service.add_checkpoint(format_add_checkpoint(12, (), lg.note(12, fork))).status == 422
    service.store.close()
    assert command_witness(parser.parse_args(["--status"]), settings) == 0
    [status] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (status["origin"], status["size"]) == (ORIGIN, 12)
    assert command_witness(parser.parse_args(["--evidence"]), settings) == 1
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0])["kind"] == "fork" and out[-1] == "# 1 piece(s) of evidence, 1 open"
