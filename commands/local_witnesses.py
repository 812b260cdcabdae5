"""Witnesses on this machine for the demo and the benchmarks (ADR 0013, 0018).

In a deployment the witnesses are other institutions' services. For ``careledger demo``
and ``careledger benchmark-witness`` three ``careledger witness`` processes stand in for
them on loopback: each with its own key and SQLite state under
``<run_dir>/witnesses/<name>/`` (kept across runs: a witness remembers what it cosigned,
so a ledger wiped while its witnesses' state is kept shows up as a rollback, as it
should), the deployment's every chain in its logs file with the processor's public key,
and a witnesses file (``<run_dir>/witnesses/witnesses.toml``, quorum 2 of 3) that the
cosigner and the verifier read.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.processes import start_cli, stop
from verifiers.integrity.witnessing import expected_chains

__all__ = ["LOCAL_WITNESSES", "LocalWitnesses", "local_witnesses"]

LOCAL_WITNESSES: Final = (
    "hospital-b.example/witness",
    "regulator.example/witness",
    "patients-association.example/witness",
)
QUORUM: Final = 2


@dataclass
class LocalWitnesses:
    directory: Path
    processes: list[subprocess.Popen[bytes]]
    urls: dict[str, str]
    vkeys: dict[str, str]

    @property
    def file(self) -> Path:
        return self.directory / "witnesses.toml"


def _logs_file(settings: Settings, directory: Path, public_key_file: Path) -> Path:
    chains = expected_chains(settings)
    lines = [
        "# written by careledger (commands/local_witnesses.py): every chain of this deployment",
        "[[log]]",
        "origins = [" + ", ".join(json.dumps(c) for c in chains) + "]",
        f"keys = [{json.dumps(str(public_key_file))}]",
        "",
    ]
    path = directory / "logs.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _wait_ready(
    ready: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"a local witness exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"a local witness did not start within {timeout:.0f}s; see {log}")
        time.sleep(0.05)
    data = json.loads(ready.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@contextlib.contextmanager
def local_witnesses(
    settings: Settings,
    public_key_file: Path,
    *,
    max_age_s: int = 300,
    directory: Path | None = None,
) -> Iterator[LocalWitnesses]:
    """Start the three local witnesses (state under ``directory``, default
    ``<run_dir>/witnesses``); stop them on exit."""
    root = directory or settings.run_dir / "witnesses"
    root.mkdir(parents=True, exist_ok=True)
    logs = _logs_file(settings, root, public_key_file)
    result = LocalWitnesses(root, [], {}, {})
    try:
        for name in LOCAL_WITNESSES:
            slug = name.split("/")[0]
            directory = root / slug
            directory.mkdir(exist_ok=True)
            ready = directory / "ready.json"
            ready.unlink(missing_ok=True)
            log = settings.run_dir / "logs" / f"witness-{slug}.log"
            s = settings.replace(
                witness_name=name,
                witness_signing_key=directory / "witness.key",
                witness_logs_file=logs,
                witness_state_dir=directory / "state",
                witness_host="127.0.0.1",
                witness_port=0,
            )
            proc = start_cli(s, log, "witness", "--create-key", "--ready-file", str(ready))
            result.processes.append(proc)
            info = _wait_ready(ready, proc, log, 30.0)
            result.urls[name] = f"http://127.0.0.1:{info['port']}"
            result.vkeys[name] = str(info["vkey"])
        lines = [
            "# written by careledger (commands/local_witnesses.py) for the local witnesses",
            f"quorum = {QUORUM}",
            f"max_age_s = {max_age_s}",
            "",
        ]
        for name in LOCAL_WITNESSES:
            lines += [
                "[[witness]]",
                f"name = {json.dumps(name)}",
                f"key = {json.dumps(result.vkeys[name])}",
                f"url = {json.dumps(result.urls[name])}",
                "",
            ]
        result.file.write_text("\n".join(lines), encoding="utf-8")
        yield result
    finally:
        for proc in result.processes:
            stop(proc)
