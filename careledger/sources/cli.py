"""``careledger source``: ``keygen`` (a source's Ed25519 key, mode 0600), ``register``
and ``revoke`` (signed with ``Settings.registrar_key``), ``list`` (the registry as read
from Kafka). Private keys are never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from careledger.config import Settings
from careledger.kafka.security import REGISTRAR
from careledger.keys import (
    REGISTRAR_KEY_TEXT_ENV,
    KeyFileError,
    load_public_keys,
    load_registrar_key,
    write_keypair,
)
from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.event import MAX_ID_LENGTH
from careledger_core.reference import ReferenceRecord, SourceKeyBody
from careledger_core.signing import PublicKey, SigningKey, format_public_key
from careledger_core.source import KeyEventStatement

from .publishing import register_key, revoke_key
from .reading import load_registrar_keys, parse_time, read_sources, summarize_keys, utc_now


def _source_id(text: str) -> str:
    if not 1 <= len(text) <= MAX_ID_LENGTH or text != text.strip():
        raise argparse.ArgumentTypeError(f"a source id has 1..{MAX_ID_LENGTH} characters")
    return text


def _time_arg(text: str) -> str:
    try:
        return parse_time(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _source_list(text: str) -> list[str]:
    return [_source_id(p.strip()) for p in text.split(",") if p.strip()]


def configure_source(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source_command", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="write a new Ed25519 key pair for a source (mode 600)")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument("--out", type=Path, help="private key path (default <run_dir>/keys/sources/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")

    p = sub.add_parser("register", help="register a source's public key (registrar-signed)")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument(
        "--public-key", required=True, help="the .pub file or an ed25519:<base64> literal"
    )
    p.add_argument(
        "--signs-for",
        type=_source_list,
        default=[],
        help="comma-separated sources this key may sign for (a gateway)",
    )
    p.add_argument("--valid-from", type=_time_arg, help="ISO 8601 instant (default now)")
    p.add_argument(
        "--init-registrar",
        action="store_true",
        help="create the registrar key (Settings.registrar_key, default "
        "<run_dir>/keys/registrar.key) if it does not exist",
    )

    p = sub.add_parser("revoke", help="revoke a source's key from a time on")
    p.add_argument("--source-id", type=_source_id, required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--at", type=_time_arg, help="ISO 8601 instant (default now)")

    p = sub.add_parser("list", help="the source registry as read from Kafka")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--at", type=_time_arg, help="status as of this instant (default now)")


def _err(message: str) -> None:
    print(f"careledger source: {message}", file=sys.stderr)


def _safe_name(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", source_id)


def _keygen(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.out or settings.keys_dir / "sources" / f"{_safe_name(args.source_id)}.key"
    try:
        key = write_keypair(path, overwrite=args.force)
    except KeyFileError as exc:
        _err(str(exc))
        return 2
    print(f"source: {args.source_id}")
    print(f"private key: {path} (mode 600)")
    print(f"public key file: {path}.pub")
    print(f"public key: {format_public_key(key.public_key)}")
    print(f"key id: {key.key_id}")
    print(
        f"register it: careledger source register --source-id {args.source_id} "
        f"--public-key {path}.pub"
    )
    return 0


def _registrar(settings: Settings, init: bool) -> tuple[SigningKey, Settings]:
    path = settings.registrar_key
    if init and not os.environ.get(REGISTRAR_KEY_TEXT_ENV):
        path = path or settings.keys_dir / "registrar.key"
        if not path.exists():
            write_keypair(path)
            print(f"created registrar key {path} (mode 600), public key {path}.pub")
            print(
                f"  trust it everywhere: CARELEDGER_TRUSTED_REGISTRAR_KEYS={path}.pub; "
                f"sign with it: CARELEDGER_REGISTRAR_KEY={path}"
            )
        settings = settings.replace(registrar_key=path)
    elif not os.environ.get(REGISTRAR_KEY_TEXT_ENV):
        if path is None:
            raise KeyFileError(
                "no registrar key configured: set CARELEDGER_REGISTRAR_KEY "
                "(or pass --init-registrar to create one)"
            )
        if not path.exists():
            raise KeyFileError(
                f"registrar key {path} does not exist (pass --init-registrar to create it)"
            )
    return load_registrar_key(settings), settings


def _trusting(settings: Settings, registrar: SigningKey) -> dict[str, PublicKey]:
    registrars = load_registrar_keys(settings)
    if registrar.key_id not in registrars:
        _err(
            f"warning: registrar key {registrar.key_id} is not in trusted_registrar_keys; "
            "processors and verifiers configured like this ignore its key events"
        )
    return {**registrars, registrar.key_id: registrar.public_key}


def _register(args: argparse.Namespace, settings: Settings) -> int:
    try:
        keys = load_public_keys([args.public_key])
    except (CareledgerError, OSError) as exc:
        _err(f"cannot read the public key: {exc}")
        return 2
    if len(keys) != 1:
        _err(f"expected one public key in {args.public_key}, found {len(keys)}")
        return 2
    public_key = keys[0]
    registrar, settings = _registrar(settings, args.init_registrar)
    snapshot = read_sources(settings, _trusting(settings, registrar), principal=REGISTRAR)
    for key in summarize_keys(snapshot.key_events):
        if key.key_id != public_key.key_id:
            continue
        if key.source_id != args.source_id:
            _err(f"key {key.key_id} is already registered to another source ({key.source_id})")
            return 2
        valid_from = args.valid_from or utc_now()
        if key.status_at(valid_from) == "active" and set(args.signs_for) <= set(key.signs_for):
            print(f"key {key.key_id} of source {key.source_id} is already active")
            return 0
    record = register_key(
        settings,
        registrar,
        args.source_id,
        public_key,
        signs_for=args.signs_for,
        valid_from=args.valid_from,
        principal=REGISTRAR,
    )
    st = _statement(record)
    extra = f", signs for {', '.join(st.signs_for)}" if st.signs_for else ""
    print(
        f"registered key {st.key_id} for source {st.source_id} from {st.valid_from}"
        f"{extra} (version {record.version}, registrar {registrar.key_id})"
    )
    return 0


def _statement(record: ReferenceRecord) -> KeyEventStatement:
    assert isinstance(record.parsed, SourceKeyBody)
    return record.parsed.statement


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    registrar, settings = _registrar(settings, False)
    snapshot = read_sources(settings, _trusting(settings, registrar), principal=REGISTRAR)
    found = [
        k
        for k in summarize_keys(snapshot.key_events)
        if k.source_id == args.source_id and k.key_id == args.key_id
    ]
    if not found:
        _err(f"source {args.source_id} has no registered key {args.key_id}")
        return 2
    record = revoke_key(settings, registrar, found[0], args.at, principal=REGISTRAR)
    st = _statement(record)
    print(
        f"revoked key {st.key_id} of source {st.source_id} from {st.valid_from} "
        f"(version {record.version})"
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    registrars = load_registrar_keys(settings)
    if not registrars:
        _err(
            "no trusted registrar keys configured (CARELEDGER_TRUSTED_REGISTRAR_KEYS): "
            "no key event can be verified"
        )
        return 2
    snapshot = read_sources(settings, registrars, principal=REGISTRAR)
    at = args.at or utc_now()
    keys = summarize_keys(snapshot.key_events)
    if args.json:
        doc = {
            "at": at,
            "keys": [k.to_dict(at) for k in keys],
            "heartbeats": len(snapshot.heartbeats),
            "problems": [p.to_dict() for p in snapshot.problems],
        }
        print(json.dumps(doc, indent=2))
        return 0
    rows = [("SOURCE", "KEY ID", "STATUS", "VALID FROM", "REVOKED FROM", "SIGNS FOR")]
    for k in keys:
        rows.append(
            (
                k.source_id,
                k.key_id,
                k.status_at(at),
                k.valid_from or "-",
                k.revoked_at or "-",
                ",".join(k.signs_for) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not keys:
        print("(no registered source keys)")
    for p in snapshot.problems:
        _err(f"skipped: {p}")
    return 0


def command_source(args: argparse.Namespace, settings: Settings) -> int:
    actions = {"keygen": _keygen, "register": _register, "revoke": _revoke, "list": _list}
    try:
        return actions[args.source_command](args, settings)
    except (KeyFileError, ValidationError) as exc:
        _err(str(exc))
        return 2
    except CareledgerError as exc:  # Kafka unreachable, delivery failed
        _err(f"{exc.code}: {exc.message}")
        return 2
