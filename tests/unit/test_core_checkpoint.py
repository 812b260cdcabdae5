"""C2SP signed-note checkpoints: interoperability with the Go reference, tamper cases."""

from __future__ import annotations

import base64
import hashlib

import pytest

from careledger_core.block import GENESIS_PREV_HASH, BlockHeader, block_hash
from careledger_core.chain_tree import ChainTree
from careledger_core.checkpoint import (
    Checkpoint,
    checkpoint_for,
    format_checkpoint,
    note_key_hash,
    open_note,
    parse_checkpoint,
    sign_note,
    verify_checkpoint,
)
from careledger_core.errors import CheckpointError, NoteUnverifiedError, SignatureError
from careledger_core.signing import SigningKey

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger test key").digest())
OTHER = SigningKey.from_seed(hashlib.sha256(b"careledger other key").digest())
NAME = "careledger.test"

# golang.org/x/mod/sumdb/note reference example (package doc and note_test.go).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
GO_NOTE = f"{GO_TEXT}\n— PeterNeumann {GO_SIGNATURE}\n"


def go_key() -> SigningKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])  # the base64 itself contains '+'
    assert seed[0] == 1  # algorithm byte: Ed25519
    return SigningKey.from_seed(seed[1:])


def test_sign_note_matches_go_sumdb_note_byte_for_byte() -> None:
    key = go_key()
    name, key_hash, vkey = GO_VKEY.split("+")
    assert base64.b64decode(vkey) == b"\x01" + key.public_key.raw
    assert note_key_hash(name, key.public_key).hex() == key_hash
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    assert open_note(GO_NOTE, {"PeterNeumann": key.public_key}) == GO_TEXT
    with pytest.raises(SignatureError):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), {"PeterNeumann": key.public_key})


def head() -> BlockHeader:
    return BlockHeader(
        chain_id="careledger.test/careledger.access-events/0",
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        merkle_root="ab" * 32,
        event_count=1,
        first_offset=0,
        last_offset=0,
        dead_lettered=0,
        absent_offsets=0,
        first_event_time="2024-01-01T00:00:00.000000Z",
        last_event_time="2024-01-01T00:00:00.000000Z",
        created_at="2024-01-01T00:00:00.000000Z",
        key_id=KEY.key_id,
    )


def genesis_tree() -> ChainTree:
    return ChainTree.of_blocks([block_hash(head())])


def test_checkpoint_of_head_round_trips() -> None:
    cp = checkpoint_for(head(), genesis_tree(), extensions=("witness-hint",))
    # One block: the root is its leaf hash SHA-256(0x00 || block hash) (RFC 6962).
    assert (cp.origin, cp.size, cp.root_hash) == (
        head().chain_id,
        1,
        hashlib.sha256(b"\x00" + block_hash(head())).digest(),
    )
    body = format_checkpoint(cp)
    assert body == (
        f"{cp.origin}\n1\n{base64.b64encode(cp.root_hash).decode()}\n"
        f"careledger-head {block_hash(head()).hex()}\nwitness-hint\n"
    )
    assert parse_checkpoint(body) == cp
    note = sign_note(body, NAME, KEY)
    assert verify_checkpoint(note, {NAME: KEY.public_key}) == cp
    assert cp.height == 0


def test_witness_cosignature_and_foreign_signatures() -> None:
    body = format_checkpoint(checkpoint_for(head(), genesis_tree()))
    note = sign_note(body, NAME, KEY)
    witness_line = sign_note(body, "witness.example", OTHER).split("\n\n", 1)[1]
    cosigned = note + witness_line
    assert open_note(cosigned, {NAME: KEY.public_key}) == body
    assert open_note(cosigned, {"witness.example": OTHER.public_key}) == body
    assert open_note(cosigned, {NAME: KEY.public_key, "witness.example": OTHER.public_key})
    # a bad signature from any key we were asked to check fails the note
    broken = cosigned.replace(witness_line, witness_line[:-6] + "AAAA=\n")
    with pytest.raises((SignatureError, CheckpointError)):
        open_note(broken, {NAME: KEY.public_key, "witness.example": OTHER.public_key})


def test_note_without_trusted_signature_is_unverified() -> None:
    body = format_checkpoint(checkpoint_for(head(), genesis_tree()))
    note = sign_note(body, NAME, OTHER)  # right name, wrong key: key hash differs
    with pytest.raises(NoteUnverifiedError) as info:
        open_note(note, {NAME: KEY.public_key})
    assert isinstance(info.value, CheckpointError) and info.value.code == "NOTE_UNVERIFIED"
    with pytest.raises(NoteUnverifiedError):
        open_note(sign_note(body, "someone.else", KEY), {NAME: KEY.public_key})


def test_tampered_checkpoint_body_rejected() -> None:
    body = format_checkpoint(Checkpoint(origin="o", size=10, root_hash=b"\x01" * 32))
    note = sign_note(body, NAME, KEY)
    with pytest.raises(SignatureError):
        open_note(note.replace("\n10\n", "\n9\n", 1), {NAME: KEY.public_key})


@pytest.mark.parametrize(
    "note",
    [
        "",
        "no signatures\n",
        "text\n\n",
        "text\n\n— careledger.test AAAA\n",  # too short
        "text\n\n- careledger.test " + "A" * 92 + "\n",  # hyphen, not em dash
        "text\n\n— careledger.test " + "A" * 92,  # no final newline
        "text\n\n— careledger test " + "A" * 92 + "\n",  # space in name
        "text\n\n— careledger.test !!!!\n",
        "\ntext\n\n— careledger.test " + "A" * 92 + "\n",
        "te\x01xt\n\n— careledger.test " + "A" * 92 + "\n",
    ],
)
def test_malformed_notes_rejected(note: str) -> None:
    with pytest.raises(CheckpointError):
        open_note(note, {NAME: KEY.public_key})


@pytest.mark.parametrize(
    "body",
    [
        "o\n1\n",  # no root
        "o\n01\n" + base64.b64encode(b"\x00" * 32).decode() + "\n",  # leading zero
        "o\n-1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n",
        "o\n1\n" + base64.b64encode(b"\x00" * 31).decode() + "\n",  # short root
        "o\n1\n" + base64.b64encode(b"\x00" * 32).decode(),  # no final newline
        "o\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n",  # empty extension
        "\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n",  # empty origin
        "o\n1\n" + base64.b64encode(b"\x00" * 32).decode().rstrip("=") + "\n",  # unpadded
    ],
)
def test_malformed_checkpoint_bodies_rejected(body: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(body)


def test_sign_note_rejects_bad_input() -> None:
    for body, name in [
        ("no newline", NAME),
        ("a\n\nb\n", NAME),
        ("ok\n", "bad name"),
        ("ok\n", "a+b"),
    ]:
        with pytest.raises(CheckpointError):
            sign_note(body, name, KEY)
    with pytest.raises(CheckpointError):
        Checkpoint(origin="o\n", size=1, root_hash=b"\x00" * 32)
    with pytest.raises(CheckpointError):
        Checkpoint(origin="o", size=-1, root_hash=b"\x00" * 32)
