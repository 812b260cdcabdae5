"""Block headers (validation, canonical bytes, hash) and Ed25519 block signatures."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger_core.block import (
    GENESIS_PREV_HASH,
    SIGNING_CONTEXT,
    BlockHeader,
    block_hash,
    decode_header,
    header_bytes,
    make_chain_id,
)
from careledger_core.errors import (
    HeaderValidationError,
    IntegrityError,
    KeyFormatError,
    SignatureError,
    UnknownKeyError,
)
from careledger_core.hashing import EMPTY_ROOT
from careledger_core.jcs import canonicalize
from careledger_core.signing import (
    PublicKey,
    SigningKey,
    TrustedKeys,
    format_private_key,
    format_public_key,
    key_id,
    parse_private_key,
    parse_public_key,
)

KEY = SigningKey.from_seed(hashlib.sha256(b"careledger test key").digest())
OTHER = SigningKey.from_seed(hashlib.sha256(b"careledger other key").digest())
TS = "2024-06-15T08:00:02.000000Z"


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "chain_id": "careledger.test/careledger.access-events/0",
        "height": 0,
        "prev_hash": GENESIS_PREV_HASH,
        "merkle_root": "ab" * 32,
        "event_count": 4,
        "first_offset": 0,
        "last_offset": 5,
        "dead_lettered": 1,
        "absent_offsets": 1,
        "first_event_time": TS,
        "last_event_time": TS,
        "created_at": TS,
        "key_id": KEY.key_id,
    }
    base.update(changes)
    return base


def header(**changes: Any) -> BlockHeader:
    return BlockHeader(**fields(**changes))


# ---------------------------------------------------------------- header validation

INVALID_HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("schema", {"schema": "careledger.block/2"}),
    ("chain_id", {"chain_id": ""}),
    ("chain_id", {"chain_id": "has space/t/0"}),
    ("chain_id", {"chain_id": "line\nbreak"}),
    ("chain_id", {"chain_id": "x" * 257}),
    ("height", {"height": -1}),
    ("height", {"height": True}),
    ("height", {"height": 1.0}),
    ("height", {"height": 2**53}),
    ("event_count", {"event_count": -1, "dead_lettered": 6}),
    ("first_offset", {"first_offset": -1}),
    ("prev_hash", {"prev_hash": "0" * 63}),
    ("prev_hash", {"prev_hash": "A" * 64, "height": 1}),
    ("prev_hash", {"height": 1}),  # non-genesis with the genesis prev hash
    ("prev_hash", {"prev_hash": "1" * 64}),  # genesis with a real prev hash
    ("merkle_root", {"merkle_root": "g" * 64}),
    ("merkle_root", {"event_count": 0, "dead_lettered": 5}),  # empty block, non-empty root
    ("key_id", {"key_id": KEY.key_id.upper()}),
    ("key_id", {"key_id": KEY.key_id[:-1]}),
    ("created_at", {"created_at": "2024-06-15T08:00:02Z"}),
    ("first_event_time", {"first_event_time": "2024-02-30T00:00:00.000000Z"}),
    ("last_event_time", {"last_event_time": 5}),
    ("last_offset", {"last_offset": -1, "first_offset": 0}),
    ("event_count", {"last_offset": 6}),  # one offset unaccounted for
    ("event_count", {"absent_offsets": 0}),  # one offset too few
]


@pytest.mark.parametrize(("field", "changes"), INVALID_HEADERS)
def test_invalid_header_rejected_on_construction(field: str, changes: dict[str, Any]) -> None:
    with pytest.raises(HeaderValidationError) as info:
        header(**changes)
    assert info.value.field == field
    assert info.value.code == "BLOCK_HEADER_INVALID"


@pytest.mark.parametrize(("field", "changes"), INVALID_HEADERS)
def test_invalid_header_rejected_on_decoding(field: str, changes: dict[str, Any]) -> None:
    if any(isinstance(v, float) for v in changes.values()):
        return  # canonical JSON writes 1.0 as 1: nothing left to reject
    doc = {"schema": "careledger.block/1", **fields(**changes)}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # JCS for ASCII
    with pytest.raises(HeaderValidationError) as info:
        decode_header(data)
    assert info.value.field in (field, "$")


def test_empty_block_has_empty_tree_root() -> None:
    h = header(event_count=0, dead_lettered=6, absent_offsets=0, merkle_root=EMPTY_ROOT.hex())
    assert decode_header(header_bytes(h)) == h


def test_header_bytes_are_rfc8785_of_all_fields() -> None:
    h = header()
    expected = canonicalize({"schema": "careledger.block/1", **fields()})
    assert header_bytes(h) == expected
    assert block_hash(h) == hashlib.sha256(expected).digest()
    assert decode_header(expected) == h


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b'":', b'": '),
        lambda b: b + b"\n",
        lambda b: b" " + b,
        lambda b: json.dumps(json.loads(b)).encode(),
        lambda b: json.dumps(dict(reversed(list(json.loads(b).items())))).encode(),
        lambda b: b.replace(b'"height":0', b'"height":0,"height":0'),
        lambda b: b.replace(b"careledger.test", b"careledger\\u002etest"),
        lambda b: b.replace(b"/", b"\\/"),
        lambda b: b.replace(b'"height":0', b'"height":-0'),
    ],
)
def test_non_canonical_header_rejected(mangle: Any) -> None:
    data = mangle(header_bytes(header()))
    assert data != header_bytes(header())
    with pytest.raises(HeaderValidationError):
        decode_header(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "$"),
        (b"[]", "$"),
        (b"{}", "chain_id"),
        (b'{"chain_id":"a/b/0","extra":1}', "extra"),
    ],
)
def test_malformed_header_bytes(data: bytes, field: str) -> None:
    with pytest.raises(HeaderValidationError) as info:
        decode_header(data)
    assert info.value.field == field


@given(st.sampled_from(list(fields())), st.data())
def test_any_header_field_change_changes_the_block_hash(name: str, data: st.DataObject) -> None:
    h = header()
    changed_fields = fields(height=1, prev_hash="cd" * 32)
    base = BlockHeader(**changed_fields)
    replacement = {
        "chain_id": "careledger.test/careledger.access-events/1",
        "height": 2,
        "prev_hash": "ef" * 32,
        "merkle_root": "01" * 32,
        "event_count": 3,
        "first_offset": 1,
        "last_offset": 6,
        "dead_lettered": 2,
        "absent_offsets": 2,
        "first_event_time": "2024-06-15T08:00:02.000001Z",
        "last_event_time": "2024-06-15T08:00:02.000001Z",
        "created_at": "2024-06-15T08:00:02.000001Z",
        "key_id": OTHER.key_id,
    }[name]
    try:
        other = BlockHeader(**{**changed_fields, name: replacement})
    except HeaderValidationError:
        data.draw(st.just(None))
        return
    assert block_hash(other) != block_hash(base)
    assert h != other


def test_make_chain_id() -> None:
    assert make_chain_id("careledger.local", "careledger.access-events", 2) == (
        "careledger.local/careledger.access-events/2"
    )
    with pytest.raises(HeaderValidationError):
        make_chain_id("has space", "t", 0)
    with pytest.raises(HeaderValidationError):
        make_chain_id("o", "t", -1)


# ---------------------------------------------------------------- keys and signatures


def test_key_id_is_first_8_bytes_of_sha256_of_raw_public_key() -> None:
    raw = KEY.public_key.raw
    assert (
        KEY.key_id == KEY.public_key.key_id == key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]
    )
    with pytest.raises(KeyFormatError):
        key_id(raw[:31])


def test_signature_covers_context_and_canonical_header_bytes() -> None:
    h = header()
    sig = KEY.sign_header(h)
    assert len(sig) == 64
    nacl.signing.VerifyKey(KEY.public_key.raw).verify(SIGNING_CONTEXT + header_bytes(h), sig)
    KEY.public_key.verify_header(h, sig)
    TrustedKeys([KEY.public_key]).verify_header(h, sig)


def test_signature_without_domain_separation_context_rejected() -> None:
    h = header()
    with pytest.raises(SignatureError):
        KEY.public_key.verify_header(h, KEY.sign(header_bytes(h)))


@given(st.integers(0, 511))
def test_any_bit_flip_in_signature_rejected(bit: int) -> None:
    h = header()
    sig = bytearray(KEY.sign_header(h))
    sig[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        TrustedKeys([KEY.public_key]).verify_header(h, bytes(sig))


def test_signature_over_one_header_does_not_verify_another() -> None:
    sig = KEY.sign_header(header())
    with pytest.raises(SignatureError):
        KEY.public_key.verify_header(header(created_at="2024-06-15T08:00:02.000001Z"), sig)


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 65, "00" * 64])
def test_malformed_signature_rejected(sig: Any) -> None:
    with pytest.raises(SignatureError):
        KEY.public_key.verify_header(header(), sig)


def test_block_signed_by_untrusted_key_is_unknown_key_error() -> None:
    h = header(key_id=OTHER.key_id)
    sig = OTHER.sign_header(h)
    OTHER.public_key.verify_header(h, sig)
    with pytest.raises(UnknownKeyError) as info:
        TrustedKeys([KEY.public_key]).verify_header(h, sig)
    assert info.value.code == "KEY_UNKNOWN" and info.value.details["key_id"] == OTHER.key_id
    assert isinstance(info.value, IntegrityError)


def test_other_key_signing_under_trusted_key_id_rejected() -> None:
    h = header()  # names KEY
    with pytest.raises(SignatureError):
        TrustedKeys([KEY.public_key, OTHER.public_key]).verify_header(
            h, OTHER.sign(SIGNING_CONTEXT + header_bytes(h))
        )
    with pytest.raises(SignatureError):
        OTHER.public_key.verify_header(h, OTHER.sign(SIGNING_CONTEXT + header_bytes(h)))


def test_signer_refuses_header_naming_another_key() -> None:
    with pytest.raises(KeyFormatError):
        OTHER.sign_header(header())


def test_key_rotation_overlap_trusts_both_keys() -> None:
    trusted = TrustedKeys([KEY.public_key, OTHER.public_key])
    for key in (KEY, OTHER):
        h = header(key_id=key.key_id)
        trusted.verify_header(h, key.sign_header(h))
    assert set(trusted) == {KEY.key_id, OTHER.key_id} and len(trusted) == 2
    assert trusted[KEY.key_id] == KEY.public_key


def test_private_key_text_round_trip() -> None:
    text = format_private_key(KEY)
    assert text.startswith("careledger-ed25519-private-v1\n") and text.endswith("\n")
    assert parse_private_key(text) == KEY
    assert parse_private_key(text.rstrip("\n")) == KEY
    assert base64.b64decode(text.splitlines()[1]) == KEY.seed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "careledger-ed25519-private-v1\n",
        "careledger-ed25519-private-v2\n" + base64.b64encode(b"\x00" * 32).decode() + "\n",
        "careledger-ed25519-private-v1\n" + base64.b64encode(b"\x00" * 31).decode() + "\n",
        "careledger-ed25519-private-v1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n",
        "careledger-ed25519-private-v1\n" + base64.b64encode(b"\x00" * 32).decode()[:-1] + "\n",
        "careledger-ed25519-private-v1\n" + "!" * 44 + "\n",
        "careledger-ed25519-private-v1\r\n" + base64.b64encode(b"\x00" * 32).decode() + "\n",
        # non-canonical base64: last character's unused bits set
        "careledger-ed25519-private-v1\n" + base64.b64encode(b"\x00" * 32).decode()[:-2] + "B=\n",
    ],
)
def test_malformed_private_key_text_rejected(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_private_key(text)


def test_public_key_literal_round_trip_and_rejects() -> None:
    literal = format_public_key(KEY.public_key)
    assert literal.startswith("ed25519:")
    assert parse_public_key(literal) == KEY.public_key
    assert TrustedKeys.from_literals([literal]).keys() == {KEY.key_id}
    for bad in ("", "ed25519:", "ssh-ed25519 " + literal[8:], literal[:-2], "ed25519:" + "A" * 44):
        with pytest.raises(KeyFormatError):
            parse_public_key(bad)
    with pytest.raises(KeyFormatError):
        PublicKey(b"\x00" * 31)
    with pytest.raises(KeyFormatError):
        SigningKey.from_seed(b"\x00" * 31)


def test_keys_are_immutable_and_never_print_the_seed() -> None:
    with pytest.raises(AttributeError):
        KEY._nacl = None  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        KEY.public_key._raw = b""
    assert KEY.seed.hex() not in repr(KEY) and KEY.key_id in repr(KEY)
    assert base64.b64encode(KEY.seed).decode() not in repr(KEY)
    assert hash(KEY.public_key) == hash(parse_public_key(format_public_key(KEY.public_key)))
