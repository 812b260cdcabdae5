"""Sealing an access event (careledger_core/sealing.py, ADR 0037): the public part
names no one of the simulated hospital, the sealed part opens only with its patient's
key for its own leaf and only to the commitment the leaf signs, and each way of
tampering with it is refused with its code."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from careledger_core.event import canonical_event_bytes
from careledger_core.hashing import leaf_hash
from careledger_core.jcs import canonicalize
from careledger_core.sealing import (
    COMMITMENT_CONTEXT,
    NONCE_CONTEXT,
    SealError,
    commitment,
    join,
    ledger_document,
    patient_ref,
    seal,
    split,
    unseal,
)
from producers.simulator.events import simulate
from producers.simulator.model import HospitalModel

KEY = hashlib.sha256(b"patient key, test").digest()
OTHER_KEY = hashlib.sha256(b"another patient's key, test").digest()
SALT = hashlib.sha256(b"salt, test").digest()


@pytest.fixture(scope="module")
def hospital() -> tuple[HospitalModel, list[dict[str, Any]]]:
    model = HospitalModel(staff=60, patients=300, seed=3)
    docs = [json.loads(canonical_event_bytes(e)) for e in simulate(model, 3000, seed=11)]
    return model, docs


def _sealed_event(doc: dict[str, Any], key: bytes = KEY) -> tuple[bytes, bytes, bytes]:
    """(leaf hash, sealed part, commitment) of one event, as the processor would make them."""
    public, sensitive = split(doc)
    c = commitment(SALT, sensitive)
    leaf = leaf_hash(canonicalize(ledger_document(public, c)))
    return leaf, seal(key, leaf, SALT, sensitive), c


def test_no_identifier_of_the_simulated_hospital_is_left_in_the_public_part(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    model, docs = hospital
    people = {p.mrn for p in model.patients} | {p.encounter_id for p in model.patients}
    people |= {p.name for p in model.patients}
    people |= {m.id for m in model.staff} | {m.name for m in model.staff}
    addresses = {
        d["client"]["address"] for d in docs if d.get("client") and d["client"].get("address")
    }
    workstations = {
        d["client"]["workstation"]
        for d in docs
        if d.get("client") and d["client"].get("workstation")
    }
    assert len(people) > 600 and addresses and workstations  # the test sees real data
    seen_in_clear = 0
    for doc in docs:
        text = canonical_event_bytes_text(doc)
        seen_in_clear += any(i in text for i in people)  # the event in clear names people
        public, _sensitive = split(doc)
        shown = json.dumps(public)
        leaked = [i for i in people | addresses | workstations if i in shown]
        assert not leaked, (leaked, public)
    assert seen_in_clear == len(docs)


def canonical_event_bytes_text(doc: dict[str, Any]) -> str:
    return canonicalize(doc).decode()


def test_split_and_join_give_back_every_simulated_event(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    for doc in hospital[1]:
        public, sensitive = split(doc)
        assert join(public, sensitive) == doc
        assert canonicalize(join(public, sensitive)) == canonicalize(doc)


def test_a_sealed_event_opens_to_its_sensitive_part_with_its_patient_s_key(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    for doc in hospital[1][:200]:
        leaf, sealed, c = _sealed_event(doc)
        salt, sensitive = unseal(KEY, leaf, sealed, c)
        assert salt == SALT
        assert join(split(doc)[0], sensitive) == doc


def test_the_construction_is_xchacha20_poly1305_with_the_derived_nonce() -> None:
    """Checked independently: the nonce is SHA-256(context, leaf, salt)[:24], and
    libsodium's own AEAD opens the box with the leaf as associated data."""
    leaf = hashlib.sha256(b"a leaf").digest()
    sealed = seal(KEY, leaf, SALT, {"patient": {"id": "MRN-1"}})
    nonce = hashlib.sha256(NONCE_CONTEXT + leaf + SALT).digest()[:24]
    assert sealed[:24] == nonce
    plain = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[24:], leaf, nonce, KEY)
    assert plain == SALT + b'{"patient":{"id":"MRN-1"}}'
    c = commitment(SALT, {"patient": {"id": "MRN-1"}})
    assert c == hashlib.sha256(COMMITMENT_CONTEXT + SALT + b'{"patient":{"id":"MRN-1"}}').digest()


def test_a_sealed_part_moved_to_another_leaf_does_not_open(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    a, b = hospital[1][0], hospital[1][1]
    _leaf_a, sealed_a, c_a = _sealed_event(a)
    leaf_b, _sealed_b, _c_b = _sealed_event(b)
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf_b, sealed_a, c_a)
    assert raised.value.code == "SEALED_UNOPENED"


def test_another_patient_s_key_does_not_open_it(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    leaf, sealed, c = _sealed_event(hospital[1][0])
    with pytest.raises(SealError) as raised:
        unseal(OTHER_KEY, leaf, sealed, c)
    assert raised.value.code == "SEALED_UNOPENED"


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_a_changed_bit_anywhere_in_the_sealed_part_does_not_open(position: int, bit: int) -> None:
    leaf = hashlib.sha256(b"leaf").digest()
    sensitive = {"patient": {"id": "MRN-7"}, "actor.name": "Dr. Example"}
    sealed = bytearray(seal(KEY, leaf, SALT, sensitive))
    sealed[position % len(sealed)] ^= 1 << bit
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf, bytes(sealed), commitment(SALT, sensitive))
    assert raised.value.code in ("SEALED_UNOPENED", "SEALED_MALFORMED")


def test_a_sealed_part_of_other_contents_does_not_open_the_signed_commitment() -> None:
    """The operator (who holds the keys) re-seals a changed actor under the right leaf:
    the box opens, the commitment the source signed does not."""
    leaf = hashlib.sha256(b"leaf").digest()
    signed = {"patient": {"id": "MRN-7"}, "actor.id": "dr.house"}
    swapped = {"patient": {"id": "MRN-7"}, "actor.id": "dr.wilson"}
    forged = seal(KEY, leaf, SALT, swapped)
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf, forged, commitment(SALT, signed))
    assert raised.value.code == "COMMITMENT_MISMATCH"


def test_a_box_with_a_chosen_nonce_or_loose_json_is_refused() -> None:
    leaf = hashlib.sha256(b"leaf").digest()
    sensitive = {"patient": {"id": "MRN-7"}}
    chosen = b"\x00" * 24
    box = crypto_aead_xchacha20poly1305_ietf_encrypt(
        SALT + canonicalize(sensitive), leaf, chosen, KEY
    )
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf, chosen + box, commitment(SALT, sensitive))
    assert raised.value.code == "SEALED_MALFORMED"
    nonce = hashlib.sha256(NONCE_CONTEXT + leaf + SALT).digest()[:24]
    loose = crypto_aead_xchacha20poly1305_ietf_encrypt(
        SALT + b'{ "patient" : {"id":"MRN-7"}}', leaf, nonce, KEY
    )
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf, nonce + loose, commitment(SALT, sensitive))
    assert raised.value.code == "SEALED_MALFORMED"
    with pytest.raises(SealError) as raised:
        unseal(KEY, leaf, b"short", commitment(SALT, sensitive))
    assert raised.value.code == "SEALED_MALFORMED"


@settings(max_examples=50, deadline=None)
@given(salt_a=st.binary(min_size=32, max_size=32), salt_b=st.binary(min_size=32, max_size=32))
def test_the_commitment_depends_on_the_salt(salt_a: bytes, salt_b: bytes) -> None:
    """Without the salt, a guessed identifier cannot be checked against a commitment:
    the same part under two salts gives unrelated commitments."""
    sensitive = {"patient": {"id": "MRN-000001"}}
    assert (commitment(salt_a, sensitive) == commitment(salt_b, sensitive)) == (salt_a == salt_b)


def test_the_ledger_document_holds_the_commitment_and_no_identifier(
    hospital: tuple[HospitalModel, list[dict[str, Any]]],
) -> None:
    doc = next(d for d in hospital[1] if d["patient"]["id"] != "-")
    public, sensitive = split(doc)
    signed = ledger_document(public, commitment(SALT, sensitive))
    assert signed["sealed_commitment"] == commitment(SALT, sensitive).hex()
    assert doc["patient"]["id"] not in json.dumps(signed)
    with pytest.raises(SealError):
        ledger_document(signed, commitment(SALT, sensitive))  # not twice


def test_patient_refs_are_per_key() -> None:
    assert patient_ref(KEY) == patient_ref(KEY)
    assert patient_ref(KEY) != patient_ref(OTHER_KEY)
    assert len(bytes.fromhex(patient_ref(KEY))) == 32


@pytest.mark.parametrize(
    "call",
    [
        lambda: seal(b"short", b"\x00" * 32, SALT, {}),
        lambda: seal(KEY, b"\x00" * 31, SALT, {}),
        lambda: seal(KEY, b"\x00" * 32, b"salt", {}),
        lambda: commitment(b"salt", {}),
        lambda: join({}, {"not.sensitive": 1}),
        lambda: patient_ref(b""),
    ],
)
def test_bad_inputs_are_refused_with_a_code(call: Any) -> None:
    with pytest.raises(SealError) as raised:
        call()
    assert raised.value.code == "BAD_INPUT"
