"""Publishing registrar-signed key events to the sources topic (ADR 0010).

``register_key`` and ``revoke_key`` sign a ``KeyEventStatement`` with the registrar key
and produce it as the next version of its ``source-key`` record; ``ensure_local_source``
sets up keys and a registration for local tooling (the demo). Each names the Kafka
``principal`` it reads and writes the sources topic as: the caller's (``careledger
source`` and ``keygen --rotate`` are the registrar; the benchmarks, admin).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from careledger.config import Settings
from careledger.keys import KeyFileError, load_registrar_key, load_source_key, write_keypair
from careledger_core.reference import ReferenceRecord, canonical_reference_bytes
from careledger_core.signing import PublicKey, SigningKey
from careledger_core.source import KeyEventStatement, SourceAuthError, sign_key_event

from .reading import (
    READ_TIMEOUT_S,
    KeySummary,
    load_registrar_keys,
    read_registry,
    read_sources,
    utc_now,
)

log = logging.getLogger("careledger.sources")


def _key_record(statement: KeyEventStatement, signature: str, version: int) -> ReferenceRecord:
    return ReferenceRecord(
        kind="source-key",
        record_id=f"{statement.source_id}/{statement.key_id}",
        version=version,
        recorded_at=utc_now(),
        effective_at=statement.valid_from,
        body={"statement": msgspec.to_builtins(statement), "signature": signature},
    )


def publish_key_event(
    settings: Settings,
    registrar_key: SigningKey,
    statement: KeyEventStatement,
    *,
    principal: str,
    timeout: float = READ_TIMEOUT_S,
) -> ReferenceRecord:
    """Sign ``statement`` with the registrar key and produce it to the sources topic as
    a ``source-key`` reference record (keyed by source id), waiting for Kafka's
    acknowledgement, as the Kafka ``principal``. Its version is 1 for a key never seen
    on the topic, else one more than the highest there. Raises ``DeliveryError`` if
    Kafka does not acknowledge."""
    from careledger.kafka.producer import AccessEventProducer

    signature = sign_key_event(registrar_key, statement)
    snapshot = read_sources(settings, {}, principal=principal, timeout=timeout)
    record_id = f"{statement.source_id}/{statement.key_id}"
    record = _key_record(statement, signature, snapshot.versions.get(record_id, 0) + 1)
    producer = AccessEventProducer(
        settings, topic=settings.topic_sources, sign=False, principal=principal
    )
    producer.send_raw(canonical_reference_bytes(record), statement.source_id.encode())
    producer.close(timeout)
    log.info(
        "published %s key event for source %s key %s (version %d)",
        statement.status,
        statement.source_id,
        statement.key_id,
        record.version,
    )
    return record


def _public_b64(key: PublicKey) -> str:
    return base64.b64encode(key.raw).decode("ascii")


def register_key(
    settings: Settings,
    registrar_key: SigningKey,
    source_id: str,
    public_key: PublicKey,
    *,
    principal: str,
    signs_for: Sequence[str] = (),
    valid_from: str | None = None,
) -> ReferenceRecord:
    """Register ``public_key`` for ``source_id`` (active from ``valid_from``, default now)."""
    statement = msgspec.convert(
        {
            "source_id": source_id,
            "key_id": public_key.key_id,
            "public_key": _public_b64(public_key),
            "status": "active",
            "valid_from": valid_from or utc_now(),
            "signs_for": list(signs_for),
            "registrar_key_id": registrar_key.key_id,
        },
        KeyEventStatement,
    )
    return publish_key_event(settings, registrar_key, statement, principal=principal)


def revoke_key(
    settings: Settings,
    registrar_key: SigningKey,
    key: KeySummary,
    at: str | None = None,
    *,
    principal: str,
) -> ReferenceRecord:
    """Revoke a registered key from ``at`` on (default now)."""
    statement = KeyEventStatement(
        source_id=key.source_id,
        key_id=key.key_id,
        public_key=key.public_key,
        status="revoked",
        valid_from=at or utc_now(),
        signs_for=key.signs_for,
        registrar_key_id=registrar_key.key_id,
    )
    return publish_key_event(settings, registrar_key, statement, principal=principal)


def ensure_local_source(settings: Settings, say: Any = print, *, principal: str) -> Settings:
    """Local tooling (the demo): a registrar key and a source key for
    ``settings.source_id`` (created, mode 0600, if missing; defaults under
    ``<run_dir>/keys``), the registrar trusted, and the source key registered on the
    sources topic (as the Kafka ``principal``) if it is not yet. Returns the settings
    that use them."""
    keys = settings.keys_dir
    registrar_path = settings.registrar_key or keys / "registrar.key"
    source_path = settings.source_key or keys / "source.key"
    for path, what in ((registrar_path, "registrar key"), (source_path, "source key")):
        if not path.exists():
            write_keypair(path)
            say(f"== created {what} {path} (public key {path}.pub)")
    trusted = settings.trusted_registrar_keys or (f"{registrar_path}.pub",)
    s = settings.replace(
        registrar_key=registrar_path, source_key=source_path, trusted_registrar_keys=trusted
    )
    registrar = load_registrar_key(s)
    source_key = load_source_key(s)
    assert source_key is not None
    registrars = load_registrar_keys(s)
    if registrar.key_id not in registrars:
        raise KeyFileError(
            f"registrar key {registrar.key_id} is not among trusted_registrar_keys: "
            "its registrations would be ignored"
        )
    registry, _problems = read_registry(s, registrars, principal=principal)
    try:
        registry.authorize(s.source_id, source_key.key_id, utc_now())
    except SourceAuthError as exc:
        if exc.code != "UNKNOWN_KEY":
            raise KeyFileError(
                f"source key {source_key.key_id} cannot sign for {s.source_id} ({exc.code}): "
                "create a new one with `careledger source keygen` and register it"
            ) from exc
        register_key(s, registrar, s.source_id, source_key.public_key, principal=principal)
        say(f"== registered source {s.source_id} key {source_key.key_id}")
    return s
