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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from careledger.keys import KeyFileError, read_owner_only
from careledger.sealed_raw import raw_payload, raw_transit
from careledger_core.event import AccessEvent, event_to_dict
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.sealed_event import ingest_key, seal_for_ingest_with, sealed_document
from careledger_core.sealed_reference import SEALED_REFERENCE_KINDS, reference_transit
from careledger_core.sealing import SALT_BYTES, commitment, split

__all__ = [
    "INGEST_KEY_TEXT_ENV",
    "SEALED_DEAD_LETTER_LINE",
    "IngestKey",
    "IngestSealer",
    "load_ingest_key",
    "load_ingest_public_key",
    "open_sealed_dead_letter",
    "reference_message",
    "seal_dead_letter_for_ingest",
    "seal_raw_for_ingest",
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


def seal_raw_for_ingest(
    ingest_public_key: bytes, envelope: bytes, patients: Iterable[tuple[str, str]]
) -> bytes:
    """The transit record of a raw envelope (its canonical bytes) and the patients it
    names, ``(system, id)``, sealed whole to the processor's ingest key
    (``careledger.sealed_raw``)."""
    payload = raw_payload(envelope, patients)
    return raw_transit(bytes(SealedBox(PublicKey(ingest_public_key)).encrypt(payload)))


#: the first line of a gateway's dead letter on a sealed ledger: what follows is a sealed
#: box, to the ingest key, of the transport details (JSON), a newline and the bytes
SEALED_DEAD_LETTER_LINE: Final = b"careledger.sealed-dead-letter/1\n"


def seal_dead_letter_for_ingest(ingest_public_key: bytes, transport: bytes, value: bytes) -> bytes:
    """A dead letter's bytes and its transport details (who sent it, from where) sealed to
    the processor's ingest key: a refused record may name a patient, and on a sealed
    ledger no topic holds one in clear. ``careledger dead-letters --show-bytes`` opens it
    where the ingest key is."""
    box = SealedBox(PublicKey(ingest_public_key)).encrypt(transport + b"\n" + value)
    return SEALED_DEAD_LETTER_LINE + bytes(box)


def open_sealed_dead_letter(ingest_private: bytes, data: bytes) -> tuple[bytes, bytes] | None:
    """(transport details, bytes) of a sealed dead letter; None if ``data`` is not one or
    does not open with this key."""
    if not data.startswith(SEALED_DEAD_LETTER_LINE):
        return None
    try:
        opened = bytes(
            SealedBox(PrivateKey(ingest_private)).decrypt(data[len(SEALED_DEAD_LETTER_LINE) :])
        )
    except CryptoError:
        return None
    transport, _, value = opened.partition(b"\n")
    return transport, value


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
