"""``careledger keystore``: the key store of per-patient data keys (ADR 0037).

* ``init``: migrate the schema (the ``data_keys`` and ``key_unwraps`` tables) and make
  the token's keys (the KEK and the two HMAC keys) when they are missing; idempotent.
* ``status``: the token, where the wrapped keys live, how many there are on each server,
  and how many unwraps were counted per purpose.

Exit 0: in order; 1 (status): a server unreachable or the servers disagree; 2: the token
or ClickHouse cannot be used (one line).
"""

from __future__ import annotations

import argparse
import json
import sys

from careledger.config import Settings
from careledger.keyrows import ClickHouseRows
from careledger.keystore import KeyStore, KeyStoreError, open_keystore
from careledger.storage.backend import StorageError


def configure_keystore(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keystore_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser(
        "init",
        help="create the key store's tables and the token's keys (idempotent)",
        description="create the key store's tables and the token's keys (idempotent)",
    )
    status = sub.add_parser(
        "status",
        help="the token, the wrapped keys per server, the unwraps per purpose",
        description="the token, the wrapped keys per server, the unwraps per purpose",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")


def _open(settings: Settings, *, create: bool) -> KeyStore | None:
    try:
        return open_keystore(settings, create=create)
    except KeyStoreError as exc:
        print(f"careledger keystore: {exc}", file=sys.stderr)
        return None


def command_keystore(args: argparse.Namespace, settings: Settings) -> int:
    if args.keystore_command == "init":
        return _init(settings)
    return _status(settings, as_json=args.json)


def _init(settings: Settings) -> int:
    if settings.keystore_file is None:
        from careledger.storage.migrations import migrate

        try:
            migrate(settings)
        except StorageError as exc:
            print(f"careledger keystore: ClickHouse unavailable: {exc}", file=sys.stderr)
            return 2
    store = _open(settings, create=True)
    if store is None:
        return 2
    with store:
        try:
            count = store.count()
        except KeyStoreError as exc:
            print(f"careledger keystore: {exc}", file=sys.stderr)
            return 2
        print(
            f"key store ready: token {store.config.label!r} ({store.config.module}) holds "
            f"the key-encryption and pseudonym keys; {count} data key(s) in {store.where}"
        )
    return 0


def _status(settings: Settings, *, as_json: bool) -> int:
    store = _open(settings, create=False)
    if store is None:
        return 2
    with store:
        try:
            count = store.count()
            unwraps = store.unwrap_counts()
            rows = store.rows
            per_server = (
                rows.held_by_server() if isinstance(rows, ClickHouseRows) else {store.where: count}
            )
        except KeyStoreError as exc:
            print(f"careledger keystore: {exc}", file=sys.stderr)
            return 2
    unreachable = sorted(name for name, n in per_server.items() if n is None)
    held = {n for n in per_server.values() if n is not None}
    problem = bool(unreachable) or len(held) > 1
    if as_json:
        print(
            json.dumps(
                {
                    "token": store.config.label,
                    "module": store.config.module,
                    "data_keys": count,
                    "servers": per_server,
                    "unwraps": unwraps,
                    "in_order": not problem,
                },
                sort_keys=True,
            )
        )
        return 1 if problem else 0
    print(f"token        {store.config.label!r} through {store.config.module}: open, keys present")
    print(f"data keys    {count}")
    for name, n in sorted(per_server.items()):
        print(f"  {name:<40} {'unreachable' if n is None else n}")
    if len(held) > 1:
        print("  the servers disagree (a replica behind, or rows removed from one server)")
    total = sum(unwraps.values())
    print(f"unwraps      {total}" + ("" if not unwraps else ":"))
    for purpose, n in sorted(unwraps.items()):
        print(f"  {purpose:<40} {n}")
    return 1 if problem else 0
