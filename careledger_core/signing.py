"""Ed25519 keys for signing block headers, and their text formats.

* ``key_id(pub)`` = first 8 bytes of SHA-256(raw 32-byte public key), lowercase hex.
* A block signature is Ed25519 over ``SIGNING_CONTEXT + header_bytes(h)``; the context
  prefix keeps a block signature from ever being valid for any other message type.
* Private key text: ``"careledger-ed25519-private-v1\\n<base64 seed>\\n"``;
  public key literal: ``"ed25519:<base64 raw key>"``. These are pure string functions —
  reading and writing key files (with the right permissions) is ``careledger.keys``' job.
  Key *generation* needs randomness and lives there too (``SigningKey.from_seed`` with
  32 random bytes).

Verification (PyNaCl/libsodium) rejects non-canonical signatures and small-order keys.
Budget: about 10k verifications/s per core, so verify once per block, never per event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

import nacl.exceptions
import nacl.signing

from .block import SIGNING_CONTEXT, BlockHeader, header_bytes
from .errors import KeyFormatError, SignatureError, UnknownKeyError

__all__ = [
    "PRIVATE_KEY_HEADER",
    "PUBLIC_KEY_PREFIX",
    "PublicKey",
    "SigningKey",
    "TrustedKeys",
    "format_private_key",
    "format_public_key",
    "key_id",
    "parse_private_key",
    "parse_public_key",
]

PRIVATE_KEY_HEADER: Final = "careledger-ed25519-private-v1"
PUBLIC_KEY_PREFIX: Final = "ed25519:"
KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64


def key_id(public_key: bytes) -> str:
    """First 8 bytes of SHA-256(raw 32-byte public key), as 16 lowercase hex digits."""
    if not isinstance(public_key, bytes) or len(public_key) != KEY_SIZE:
        raise KeyFormatError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).digest()[:8].hex()


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard padded base64, and only its canonical spelling."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeyFormatError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise KeyFormatError(f"{what} is not canonical base64")
    return raw


class PublicKey:
    """An Ed25519 public key (immutable)."""

    __slots__ = ("_key_id", "_raw", "_verify_key")
    _key_id: str
    _raw: bytes
    _verify_key: nacl.signing.VerifyKey

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != KEY_SIZE:
            raise KeyFormatError("an Ed25519 public key is 32 bytes")
        try:
            verify_key = nacl.signing.VerifyKey(raw)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise KeyFormatError("not a valid Ed25519 public key") from exc
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_verify_key", verify_key)
        object.__setattr__(self, "_key_id", key_id(raw))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PublicKey is immutable")

    @property
    def raw(self) -> bytes:
        """The raw 32-byte key."""
        return self._raw

    @property
    def key_id(self) -> str:
        return self._key_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self._key_id!r})"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Verify a raw Ed25519 signature over ``message``; raises :class:`SignatureError`."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                "an Ed25519 signature is 64 bytes", details={"key_id": self._key_id}
            )
        try:
            self._verify_key.verify(message, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise SignatureError(
                "Ed25519 signature does not verify", details={"key_id": self._key_id}
            ) from exc

    def verify_header(self, h: BlockHeader, signature: bytes) -> None:
        """Check ``signature`` over the block header; raises :class:`SignatureError`."""
        if h.key_id != self._key_id:
            raise SignatureError(
                f"header names key {h.key_id}, not this key {self._key_id}",
                details={"key_id": h.key_id, "verifier_key_id": self._key_id},
            )
        try:
            self.verify(SIGNING_CONTEXT + header_bytes(h), signature)
        except SignatureError as exc:
            raise SignatureError(
                "block signature does not verify",
                details={"key_id": self._key_id, "chain_id": h.chain_id, "height": h.height},
            ) from exc


class SigningKey:
    """An Ed25519 private key (immutable; its repr never shows the seed)."""

    __slots__ = ("_nacl", "_public_key")
    _nacl: nacl.signing.SigningKey
    _public_key: PublicKey

    def __init__(self, nacl_key: nacl.signing.SigningKey) -> None:
        if not isinstance(nacl_key, nacl.signing.SigningKey):
            raise KeyFormatError("expected a nacl.signing.SigningKey")
        object.__setattr__(self, "_nacl", nacl_key)
        object.__setattr__(self, "_public_key", PublicKey(bytes(nacl_key.verify_key)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SigningKey is immutable")

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key for a 32-byte seed (RFC 8032 private key)."""
        if not isinstance(seed, bytes) or len(seed) != KEY_SIZE:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte seed. Secret."""
        return bytes(self._nacl)

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    @property
    def key_id(self) -> str:
        return self._public_key.key_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and hmac.compare_digest(other.seed, self.seed)

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature over ``message``."""
        return bytes(self._nacl.sign(message).signature)

    def sign_header(self, h: BlockHeader) -> bytes:
        """64-byte signature over ``SIGNING_CONTEXT + header_bytes(h)``.

        Refuses a header whose ``key_id`` is not this key's, so a block can never name
        one key and be signed by another.
        """
        if h.key_id != self.key_id:
            raise KeyFormatError(
                f"header names key {h.key_id}, but this key is {self.key_id}",
                details={"key_id": h.key_id, "signer_key_id": self.key_id},
            )
        return self.sign(SIGNING_CONTEXT + header_bytes(h))


class TrustedKeys(Mapping[str, PublicKey]):
    """The set of public keys a verifier trusts, by key id (immutable mapping).

    Trust comes from the verifier's own configuration, never from the store it checks.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        by_id: dict[str, PublicKey] = {}
        for key in keys:
            if not isinstance(key, PublicKey):
                raise KeyFormatError(f"expected PublicKey, got {type(key).__name__}")
            by_id[key.key_id] = key
        self._keys: Mapping[str, PublicKey] = MappingProxyType(by_id)

    @classmethod
    def from_literals(cls, literals: Iterable[str]) -> TrustedKeys:
        """From ``"ed25519:<base64>"`` literals."""
        return cls(parse_public_key(text) for text in literals)

    def __getitem__(self, kid: str) -> PublicKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({sorted(self._keys)!r})"

    def verify_header(self, h: BlockHeader, signature: bytes) -> None:
        """Raise :class:`UnknownKeyError` if ``h.key_id`` is not trusted,
        :class:`SignatureError` if the signature is bad."""
        key = self._keys.get(h.key_id)
        if key is None:
            raise UnknownKeyError(
                f"block signed by untrusted key {h.key_id}",
                details={"key_id": h.key_id, "chain_id": h.chain_id, "height": h.height},
            )
        key.verify_header(h, signature)


def format_private_key(key: SigningKey) -> str:
    """``"careledger-ed25519-private-v1\\n<base64 seed>\\n"``."""
    return f"{PRIVATE_KEY_HEADER}\n{base64.b64encode(key.seed).decode('ascii')}\n"


def parse_private_key(text: str) -> SigningKey:
    """Inverse of :func:`format_private_key` (strict; the final newline is optional)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != 2 or lines[0] != PRIVATE_KEY_HEADER:
        raise KeyFormatError(f"a private key text is {PRIVATE_KEY_HEADER!r} then one base64 line")
    return SigningKey.from_seed(_b64decode_strict(lines[1], "private key seed"))


def format_public_key(key: PublicKey) -> str:
    """``"ed25519:<base64 raw key>"``."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(key.raw).decode("ascii")


def parse_public_key(text: str) -> PublicKey:
    """Inverse of :func:`format_public_key` (strict)."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise KeyFormatError(f"a public key literal starts with {PUBLIC_KEY_PREFIX!r}")
    return PublicKey(_b64decode_strict(text[len(PUBLIC_KEY_PREFIX) :], "public key"))
