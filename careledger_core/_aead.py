"""XChaCha20-Poly1305 (IETF) from libsodium, the function ``nacl.bindings`` calls, without
its per-call checks in Python.

``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_*`` check every argument with a
chain of ``ensure`` calls and allocate through cffi; on an event-sized message that is
several times the cost of the cipher itself (measured: 6-13 µs a call against 2-3 µs
for the C function), paid twice per event by a sealed ledger's processor (open the
ingest ciphertext, seal under the patient's key) and once per row by ``verify``. These
two functions call the same C function of PyNaCl's own cffi library, with the types
and lengths checked here, once, before any pointer is passed: a key is 32 bytes, a
nonce 24, everything ``bytes``. ``tests/unit/test_aead.py`` pins them byte for byte to
``nacl.bindings`` (known answers and random inputs) and checks that every changed byte
is refused.

Errors: ``TypeError`` for an argument of the wrong type or length (a caller's bug, as in
PyNaCl), :class:`nacl.exceptions.CryptoError` when a ciphertext does not open.
"""

from __future__ import annotations

from typing import Final

import nacl.bindings  # noqa: F401  (initialises libsodium: sodium_init)
from nacl._sodium import ffi, lib
from nacl.exceptions import CryptoError

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "xchacha_decrypt", "xchacha_encrypt"]

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 24
TAG_BYTES: Final = 16
#: libsodium's bound on a message (crypto_aead_xchacha20poly1305_ietf_MESSAGEBYTES_MAX is
#: far larger; a ledger's records are bounded long before this)
_MAX_BYTES: Final = 1 << 40


def _checked(key: bytes, nonce: bytes, aad: bytes, data: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise TypeError(f"the key must be {KEY_BYTES} bytes")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise TypeError(f"the nonce must be {NONCE_BYTES} bytes")
    if type(aad) is not bytes or type(data) is not bytes:
        raise TypeError("the message and the associated data must be bytes")
    if len(data) > _MAX_BYTES:
        raise TypeError("the message is too long")


def xchacha_encrypt(message: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """``ciphertext || tag`` of ``message``, as
    ``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(message, aad, nonce, key)``."""
    _checked(key, nonce, aad, message)
    size = len(message) + TAG_BYTES
    out = ffi.new("unsigned char[]", size)
    rc = lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, ffi.NULL, message, len(message), aad, len(aad), ffi.NULL, nonce, key
    )
    if rc != 0:  # libsodium fails only on a message over its bound, checked above
        raise CryptoError("encryption failed")
    data: bytes = ffi.buffer(out, size)[:]
    return data


def xchacha_decrypt(ciphertext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """The message of ``ciphertext || tag``, as
    ``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce,
    key)``; ``CryptoError`` when it does not open with this key, nonce and ``aad``."""
    _checked(key, nonce, aad, ciphertext)
    size = len(ciphertext) - TAG_BYTES
    if size < 0:
        raise CryptoError("Decryption failed. Ciphertext failed verification")
    out = ffi.new("unsigned char[]", max(size, 1))
    rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, ffi.NULL, ffi.NULL, ciphertext, len(ciphertext), aad, len(aad), nonce, key
    )
    if rc != 0:
        raise CryptoError("Decryption failed. Ciphertext failed verification")
    data: bytes = ffi.buffer(out, size)[:]
    return data
