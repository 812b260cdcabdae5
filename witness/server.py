"""``careledger witness``: run the witness, or read its state.

    careledger witness                 serve C2SP tlog-witness on witness_host:witness_port
    careledger witness --create-key    the same, creating the witness key first if there is
                                       none (mode 0600 at witness_signing_key)
    careledger witness --vkey          print this witness's verifier key (give it to the
                                       verifiers that count its cosignatures) and exit
    careledger witness --status        the latest cosigned checkpoint of each log (JSON lines)
    careledger witness --evidence      the evidence kept (JSON lines); exit 1 if any is open

Exit codes: 0 ok, 1 open evidence (``--evidence``), 2 configuration or state error (the
message names the setting to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from careledger.config import Settings
from careledger.keys import KeyFileError, write_keypair
from careledger.service_health import ServiceHealth
from witness.config import KEY_TEXT_ENV, WitnessConfigError, load_witness
from witness.store import DB_NAME, WitnessStore, WitnessStoreError

log = logging.getLogger("careledger.witness")

__all__ = ["command_witness", "configure_witness", "serve"]


def configure_witness(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--vkey", action="store_true", help="print the witness's vkey and exit")
    what.add_argument(
        "--status", action="store_true", help="print the latest cosigned checkpoint of each log"
    )
    what.add_argument(
        "--evidence",
        action="store_true",
        help="print the evidence of log misbehaviour kept (exit 1 if any is open)",
    )
    parser.add_argument(
        "--create-key",
        action="store_true",
        help="create the witness's Ed25519 key (mode 0600) if it does not exist yet",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="once listening, write {pid, port, vkey} as JSON here (tests, scripts, port 0)",
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, ready_file: Path | None) -> int:
    import uvicorn

    from witness.http import create_app
    from witness.service import WitnessService

    config = load_witness(settings)
    service = WitnessService(config)
    uv = uvicorn.Config(
        create_app(service),
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_keep_alive=30,
        server_header=False,
        limit_concurrency=256,
    )
    uv.load()
    sock = _bind(config.host, config.port)
    server = uvicorn.Server(uv)
    server.lifespan = uv.lifespan_class(uv)  # as Server.serve() does
    await server.startup(sockets=[sock])
    port = sock.getsockname()[1]
    main = asyncio.create_task(server.main_loop())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "witness %s listening on %s:%d, %d log(s), state %s",
        config.name,
        config.host,
        port,
        len(config.logs),
        service.store.path,
    )
    log.info("verifier key: %s", service.vkey)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"pid": os.getpid(), "port": port, "vkey": service.vkey}),
            encoding="utf-8",
        )
        os.replace(tmp, ready_file)
    health = ServiceHealth.for_settings(
        settings, "witness", lambda: _metrics(service), lambda: _health(service)
    )
    await stop.wait()
    if health is not None:
        health.stop()
    server.should_exit = True
    await main
    await server.shutdown(sockets=[sock])
    service.store.close()
    log.info("witness stopped")
    return 0


def _metrics(service: Any) -> dict[str, Any]:
    heads = service.store.heads()
    now = time.time()
    evidence = service.store.evidence()
    return {
        "cosigned_size": {h.origin: h.size for h in heads},
        "seconds_since_cosigned": {h.origin: round(now - h.last_at, 1) for h in heads},
        "logs": len(heads),
        "evidence": len(evidence),
        "evidence_open": sum(1 for d in evidence if d.get("status") == "open"),
    }


def _health(service: Any) -> tuple[bool, str]:
    """The state answers. Evidence of a fork is a metric and an alert, not a sick witness:
    it keeps refusing what is inconsistent."""
    try:
        heads = service.store.heads()
    except sqlite3.Error as exc:
        return False, f"witness state unreadable: {exc}"
    return True, f"{len(heads)} log(s) cosigned"


def _open_state(settings: Settings) -> WitnessStore:
    state_dir = settings.witness_state_dir or settings.run_dir / "witness"
    if not (state_dir / DB_NAME).is_file():
        raise WitnessStoreError(
            f"no witness state in {state_dir} (witness_state_dir, CARELEDGER_WITNESS_STATE_DIR)"
        )
    return WitnessStore(state_dir)


def _print_state(settings: Settings, evidence: bool) -> int:
    store = _open_state(settings)
    try:
        if evidence:
            documents = store.evidence()
            for doc in documents:
                print(json.dumps(doc, ensure_ascii=False, sort_keys=True))
            open_count = sum(d["status"] == "open" for d in documents)
            print(f"# {len(documents)} piece(s) of evidence, {open_count} open", flush=True)
            return 1 if open_count else 0
        for head in store.heads():
            row: dict[str, Any] = {
                "origin": head.origin,
                "size": head.size,
                "root_hash": base64.b64encode(head.root_hash).decode("ascii"),
                "cosigned_at": head.last_at,
            }
            print(json.dumps(row, ensure_ascii=False))
        return 0
    finally:
        store.close()


def _create_key(settings: Settings) -> None:
    path = settings.witness_signing_key or settings.keys_dir / "witness.key"
    if os.environ.get(KEY_TEXT_ENV) or path.exists():
        return
    try:
        key = write_keypair(path)
    except (KeyFileError, OSError) as exc:
        raise WitnessConfigError(f"cannot create the witness key {path}: {exc}") from exc
    log.info("created the witness key %s (public key id %s)", path, key.key_id)


def command_witness(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.create_key:
            _create_key(settings)
        if args.status or args.evidence:
            return _print_state(settings, evidence=args.evidence)
        if args.vkey:
            print(load_witness(settings).witness_key.vkey)
            return 0
        return asyncio.run(serve(settings, args.ready_file))
    except WitnessConfigError as exc:
        print(f"careledger witness: configuration error: {exc}")
        return 2
    except WitnessStoreError as exc:
        print(f"careledger witness: {exc}")
        return 2
    except OSError as exc:
        print(f"careledger witness: cannot listen: {exc}")
        return 2
