"""The direct XChaCha20-Poly1305 calls (``careledger_core._aead``) are PyNaCl's, byte for
byte, and refuse what PyNaCl refuses: a known answer, random inputs against
``nacl.bindings``, every flipped byte, and arguments of the wrong type or length (which
must never reach the C function)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from careledger_core._aead import xchacha_decrypt, xchacha_encrypt

# draft-irtf-cfrg-xchacha-03, appendix A.3.1 (AEAD_XChaCha20_Poly1305 test vector)
_KAT_KEY = bytes(range(0x80, 0xA0))
_KAT_NONCE = bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657")
_KAT_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
_KAT_MESSAGE = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
_KAT_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)

keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=24, max_size=24)


def test_the_published_vector_is_sealed_and_opened() -> None:
    sealed = xchacha_encrypt(_KAT_MESSAGE, _KAT_AAD, _KAT_NONCE, _KAT_KEY)
    assert sealed == _KAT_CIPHERTEXT
    assert xchacha_decrypt(sealed, _KAT_AAD, _KAT_NONCE, _KAT_KEY) == _KAT_MESSAGE


@settings(max_examples=200, deadline=None)
@given(message=st.binary(max_size=2000), aad=st.binary(max_size=64), nonce=nonces, key=keys)
def test_sealing_is_pynacls_byte_for_byte(
    message: bytes, aad: bytes, nonce: bytes, key: bytes
) -> None:
    sealed = xchacha_encrypt(message, aad, nonce, key)
    assert sealed == crypto_aead_xchacha20poly1305_ietf_encrypt(message, aad, nonce, key)
    assert xchacha_decrypt(sealed, aad, nonce, key) == message
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key) == message


@settings(max_examples=100, deadline=None)
@given(data=st.data(), message=st.binary(max_size=300), nonce=nonces, key=keys)
def test_any_changed_byte_does_not_open(
    data: st.DataObject, message: bytes, nonce: bytes, key: bytes
) -> None:
    aad = b"leaf hash"
    sealed = xchacha_encrypt(message, aad, nonce, key)
    where = data.draw(st.sampled_from(["ciphertext", "aad", "nonce", "key"]))
    parts = {"ciphertext": sealed, "aad": aad, "nonce": nonce, "key": key}
    target = parts[where]
    i = data.draw(st.integers(0, len(target) - 1))
    parts[where] = target[:i] + bytes([target[i] ^ 0x01]) + target[i + 1 :]
    with pytest.raises(CryptoError):
        xchacha_decrypt(parts["ciphertext"], parts["aad"], parts["nonce"], parts["key"])


def test_a_ciphertext_shorter_than_a_tag_does_not_open() -> None:
    for short in (b"", b"\x00" * 15):
        with pytest.raises(CryptoError):
            xchacha_decrypt(short, b"", b"\x00" * 24, b"\x00" * 32)
    # an empty message seals to a tag alone, which opens to nothing
    tag = xchacha_encrypt(b"", b"", b"\x00" * 24, b"\x00" * 32)
    assert len(tag) == 16 and xchacha_decrypt(tag, b"", b"\x00" * 24, b"\x00" * 32) == b""


@pytest.mark.parametrize(
    ("message", "aad", "nonce", "key"),
    [
        (b"m", b"", b"\x00" * 24, b"\x00" * 31),  # short key
        (b"m", b"", b"\x00" * 24, b"\x00" * 33),  # long key
        (b"m", b"", b"\x00" * 23, b"\x00" * 32),  # short nonce
        (b"m", b"", b"\x00" * 25, b"\x00" * 32),  # long nonce
        ("m", b"", b"\x00" * 24, b"\x00" * 32),  # text, not bytes
        (b"m", None, b"\x00" * 24, b"\x00" * 32),  # no associated data
        (b"m", b"", bytearray(24), b"\x00" * 32),  # a mutable buffer
        (memoryview(b"m"), b"", b"\x00" * 24, b"\x00" * 32),
    ],
)
def test_arguments_of_the_wrong_type_or_length_never_reach_libsodium(
    message: object, aad: object, nonce: object, key: object
) -> None:
    with pytest.raises(TypeError):
        xchacha_encrypt(message, aad, nonce, key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        xchacha_decrypt(message, aad, nonce, key)  # type: ignore[arg-type]
