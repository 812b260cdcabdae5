"""``careledger keygen``: a new Ed25519 key pair, or a ledgered rotation of the processor key.

``careledger keygen [--out PATH]`` writes a key pair (private key mode 0600) and prints
the public key and its key id.

``careledger keygen --rotate-processor`` retires the processor's block-signing key and
puts a new one in its place (ADR 0015). The rotation is *ledgered*: two registrar-signed
key events on the sources topic, chained like every registry record, register the new
key under the log's processor identity (``careledger_core.source.processor_source_id``)
active from the rotation instant and revoke the old one from the same instant (the old
key is first registered "since always" if it never was). From then on ``verify`` reports
a block signed by the old key after the rotation (``BLOCK_KEY_NOT_CURRENT``) while the
blocks it signed before keep verifying, and ``careledger process`` refuses to start with
a retired key. Stop every processor instance before rotating: a block an instance still
signs with the old key after the rotation is a finding.

Files: the new private key replaces ``signing_key`` (``<path>`` and ``<path>.pub``); the
old public key is kept as ``<path>.retired-<key id>.pub`` (verifiers need it for the old
blocks) and the old private key is deleted (a retired key has nothing left to sign).
The new key is written to ``<path>.next`` first and only moved into place once Kafka has
both key events, so a failed rotation can be run again and reuses it.

This module sits above ``careledger.keys`` and ``careledger.sources`` (which imports
``careledger.keys``): the command cannot live in ``keys`` without an import loop.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from careledger.keys import (
    KeyFileError,
    default_key_path,
    load_registrar_key,
    load_signing_key,
    write_keypair,
)
from careledger_core.errors import CareledgerError
from careledger_core.signing import SigningKey, format_public_key
from careledger_core.source import SourceAuthError, processor_source_id

#: valid_from of an old processor key registered at its first rotation: it signed
#: every block before the rotation
SINCE_ALWAYS = "1970-01-01T00:00:00.000000Z"


def configure_keygen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, help="private key path (default: <run_dir>/keys/signing.key)"
    )
    parser.add_argument("--if-missing", action="store_true", help="do nothing if the key exists")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key")
    parser.add_argument(
        "--rotate-processor",
        action="store_true",
        help="retire the processor's signing key (signing_key) and put a new one in its "
        "place, ledgered as registrar-signed key events (stop the processors first; needs "
        "registrar_key and Kafka)",
    )


def command_keygen(args: argparse.Namespace, settings: Any) -> int:
    if args.rotate_processor:
        return _rotate(args, settings)
    path: Path = args.out or default_key_path(settings)
    if args.if_missing and path.exists():
        key = load_signing_key(path, env={})
        print(f"key exists: {path}")
    else:
        try:
            key = write_keypair(path, overwrite=args.force)
        except KeyFileError as exc:
            print(f"careledger keygen: {exc}")
            return 2
        print(f"private key: {path} (mode 600)")
    print(f"public key file: {path}.pub")
    print(f"public key: {format_public_key(key.public_key)}")
    print(f"key id: {key.key_id}")
    return 0


def _rotate(args: argparse.Namespace, settings: Any) -> int:
    from careledger.kafka.security import REGISTRAR
    from careledger.sources import load_registrar_keys, read_sources, utc_now

    path: Path = args.out or default_key_path(settings)
    try:
        old = load_signing_key(path, env={})
        registrar = load_registrar_key(settings)
        registrars = load_registrar_keys(settings)
        if registrar.key_id not in registrars:
            raise KeyFileError(
                f"registrar key {registrar.key_id} is not among trusted_registrar_keys "
                "(CARELEDGER_TRUSTED_REGISTRAR_KEYS): the rotation would be ignored"
            )
        snapshot = read_sources(settings, registrars, principal=REGISTRAR)
        registry, now = snapshot.registry, utc_now()
        identity = processor_source_id(settings.origin)
        registered = registry.keys_of(identity)
        if registered and old.key_id not in registered:
            raise KeyFileError(
                f"the key in {path} ({old.key_id}) is not a registered processor key of "
                f"{settings.origin} ({', '.join(registered)}): set CARELEDGER_SIGNING_KEY to "
                "the current one"
            )
        if old.key_id in registered:
            try:
                registry.authorize(identity, old.key_id, now)
            except SourceAuthError as exc:
                raise KeyFileError(
                    f"the processor key {old.key_id} in {path} is already retired ({exc.code}): "
                    "set CARELEDGER_SIGNING_KEY to the current one"
                ) from exc
        nxt = Path(f"{path}.next")
        new = load_signing_key(nxt, env={}) if nxt.exists() else write_keypair(nxt)
        _publish(settings, registrar, old, new, registered, now, identity)
        retired_pub = Path(f"{path}.retired-{old.key_id}.pub")
        retired_pub.write_text(format_public_key(old.public_key) + "\n", encoding="ascii")
        os.replace(nxt, path)
        os.replace(f"{nxt}.pub", f"{path}.pub")
    except (CareledgerError, OSError) as exc:
        print(f"careledger keygen: {exc}")
        return 2
    print(f"retired processor key {old.key_id} from {now} (ledgered on {settings.topic_sources})")
    print(f"  its public key: {retired_pub} (keep it trusted: blocks before {now} verify under it)")
    print(f"new processor key {new.key_id}: {path} (mode 600), public key {path}.pub")
    print(f"public key: {format_public_key(new.public_key)}")
    print(
        "next: add the new public key to every verifier's CARELEDGER_TRUSTED_KEYS (keep the "
        "retired one), then start the processor"
    )
    return 0


def _publish(
    settings: Any,
    registrar: SigningKey,
    old: SigningKey,
    new: SigningKey,
    registered: list[str],
    now: str,
    identity: str,
) -> None:
    """The key events of a rotation: the old key registered since always (first
    rotation only), the new one active from ``now``, the old one revoked from ``now``."""
    import base64

    from careledger.kafka.security import REGISTRAR
    from careledger.sources import publish_key_event, register_key
    from careledger_core.source import KeyEventStatement

    if old.key_id not in registered:
        register_key(
            settings,
            registrar,
            identity,
            old.public_key,
            principal=REGISTRAR,
            valid_from=SINCE_ALWAYS,
        )
    if new.key_id not in registered:
        register_key(
            settings, registrar, identity, new.public_key, principal=REGISTRAR, valid_from=now
        )
    publish_key_event(
        settings,
        registrar,
        KeyEventStatement(
            source_id=identity,
            key_id=old.key_id,
            public_key=base64.b64encode(old.public_key.raw).decode("ascii"),
            status="revoked",
            valid_from=now,
            registrar_key_id=registrar.key_id,
        ),
        principal=REGISTRAR,
    )
