"""The processor's ingest key (ADR 0037): sources seal each event's sensitive part to it,
so Kafka's topics hold no identifier in clear.

* An X25519 key pair. The private key is a file of its own (mode 0600, 64 hex digits
  and a newline; or ``CARELEDGER_INGEST_KEY_TEXT``), read by the processor only; the
  public key (``<file>.pub``, or ``ingest_public_key`` in the settings of a source) is
  what sources seal to.
* :class:`IngestSealer` is the source's half: an ephemeral key (drawn here, so not in
  the pure core), and per event: split, draw a salt, commit, build the sealed document
  (what the source signs) and the ingest ciphertext. The processor's half is
  :func:`careledger_core.sealed_event.open_ingest`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nacl.public import PrivateKey, PublicKey, SealedBox

from careledger.keys import KeyFileError, read_owner_only
from careledger_core.event import AccessEvent, event_to_dict
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.sealed_event import ingest_key, seal_for_ingest_with, sealed_document
from careledger_core.sealed_reference import SEALED_REFERENCE_KINDS, reference_transit
from careledger_core.sealing import SALT_BYTES, commitment, split

__all__ = [
    "INGEST_KEY_TEXT_ENV",
    "IngestKey",
    "IngestSealer",
    "load_ingest_key",
    "load_ingest_public_key",
    "reference_message",
    "seal_reference_for_ingest",
    "write_ingest_key",
]

INGEST_KEY_TEXT_ENV: Final = "CARELEDGER_INGEST_KEY_TEXT"


@dataclass(frozen=True)
class IngestKey:
    public: bytes
    private: bytes = field(repr=False)


def _parse(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{what} is not 64 hex digits")
    return raw


def write_ingest_key(path: Path) -> IngestKey:
    """A new ingest key pair: ``path`` (0600, never overwritten) and ``path.pub``."""
    key = PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite an ingest key") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(bytes(key).hex() + "\n")
    public = bytes(key.public_key)
    Path(f"{path}.pub").write_text(public.hex() + "\n", encoding="ascii")
    return IngestKey(public, bytes(key))


def load_ingest_key(path: Path | None, env: dict[str, str] | None = None) -> IngestKey:
    """The processor's ingest key pair, from ``CARELEDGER_INGEST_KEY_TEXT`` or an
    owner-only file."""
    env = dict(os.environ) if env is None else env
    text = env.get(INGEST_KEY_TEXT_ENV)
    if not text:
        if path is None:
            raise KeyFileError(
                f"no ingest key configured: set ingest_key to a key file or {INGEST_KEY_TEXT_ENV}"
            )
        text = read_owner_only(path, "ingest key", encoding="ascii")
    private = _parse(text, "the ingest key")
    return IngestKey(bytes(PrivateKey(private).public_key), private)


def load_ingest_public_key(path: Path) -> bytes:
    """A source's copy of the processor's ingest public key (64 hex digits)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the ingest public key {path}: {exc}") from None
    return _parse(text, f"the ingest public key {path}")


class IngestSealer:
    """A source's sealing to the processor's ingest key (ADR 0037): one ephemeral X25519
    key per sealer (a producer makes one per epoch), one AEAD per event."""

    def __init__(self, ingest_public_key: bytes) -> None:
        ephemeral = PrivateKey.generate()
        #: sent in every batch record this sealer's events travel in (``sealed_key``)
        self.public = bytes(ephemeral.public_key)
        self._key = ingest_key(ingest_public_key, bytes(ephemeral))

    def seal(self, event: AccessEvent) -> tuple[bytes, bytes]:
        """(sealed document, ingest ciphertext) of ``event``; the document is canonical:
        what the source signs."""
        public, sensitive = split(event_to_dict(event))
        salt = os.urandom(SALT_BYTES)
        document = sealed_document(public, commitment(salt, sensitive))
        return document, seal_for_ingest_with(self._key, document, salt, sensitive)


def seal_reference_for_ingest(ingest_public_key: bytes, record: bytes) -> bytes:
    """The transit envelope of a reference record's canonical bytes, sealed whole to the
    processor's ingest key (a sealed box: reference records are few, and unsigned, so
    the processor commits to them; ``careledger_core.sealed_reference``)."""
    return reference_transit(bytes(SealedBox(PublicKey(ingest_public_key)).encrypt(record)))


def reference_message(
    record: ReferenceRecord, ingest_public_key: bytes | None
) -> tuple[bytes | None, bytes]:
    """(Kafka key, value) of a reference record. In clear it is keyed by its subject (a
    patient's or user's id). With the ingest public key of a sealed ledger, a kind that
    names a person is sealed to it and sent without a key (the key would name the
    subject: the ledger orders a record's versions by their numbers, not their
    partition); the kinds that name no one stay as they are."""
    data = canonical_reference_bytes(record)
    if ingest_public_key is None or record.kind not in SEALED_REFERENCE_KINDS:
        return record.subject_id.encode(), data
    return None, seal_reference_for_ingest(ingest_public_key, data)
