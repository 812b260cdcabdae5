"""docker-compose.yml's ZooKeeper, run without Docker: the certs service's own
``careledger tls-certs`` lines (its volumes mapped to a directory), zoo.cfg (paths and
port mapped) on the project's pinned ZooKeeper jars. Mutual TLS only, as in compose.
Used by test_zookeeper_tls.py and test_gateway_shared_replay.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from careledger.config import PROJECT_ROOT
from careledger.stack.kafka_server import _java
from careledger.stack.zookeeper_server import (
    ZOOKEEPER_LOGBACK,
    ZOOKEEPER_MAIN,
    install_zookeeper,
    zookeeper_lib_dir,
)
from commands import cli
from tests.unit.test_compose import env_of, script_of, shell_commands

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
ZOO_CFG = PROJECT_ROOT / "deploy" / "compose" / "zookeeper" / "zoo.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certs(compose: dict[str, Any], home: Path) -> None:
    """The certs service's tls-certs and cp lines, its volumes under ``home``."""
    certs = compose["services"]["certs"]
    for argv in shell_commands(script_of(certs), env_of(certs)):
        mapped = [a.replace("/ca", str(home / "ca"), 1) if a.startswith("/ca") else a for a in argv]
        mapped = [
            str(home / a.lstrip("/")) if a.startswith("/zookeeper-tls") else a for a in mapped
        ]
        if argv[:2] == ["careledger", "tls-certs"]:
            assert cli.main(mapped[1:]) == 0, argv
        elif argv[0] == "cp" and argv[-1] == "/zookeeper-tls/":
            for source in mapped[1:-1]:
                shutil.copy(source, home / "zookeeper-tls")


def prepare(home: Path) -> dict[str, Any]:
    """Certificates and zoo.cfg under ``home``, for :func:`running`."""
    for d in ("data", "datalog", "zookeeper-tls", "logs"):
        (home / d).mkdir(exist_ok=True)
    install_zookeeper(home / "logs", quiet=True)
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    _certs(compose, home)
    port = free_port()
    text = ZOO_CFG.read_text(encoding="utf-8")
    assert "secureClientPort=2281" in text
    text = (
        text.replace("dataDir=/data", f"dataDir={home / 'data'}")
        .replace("dataLogDir=/datalog", f"dataLogDir={home / 'datalog'}")
        .replace("/zookeeper-tls/", f"{home / 'zookeeper-tls'}/")
        .replace("secureClientPort=2281", f"secureClientPort={port}")
    )
    (home / "zoo.cfg").write_text(text, encoding="utf-8")
    return {"home": home, "port": port, "compose": compose}


@contextmanager
def running(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """ZooKeeper on ``home``'s zoo.cfg until the block ends (its data kept)."""
    out = (home / "logs" / "zookeeper.out").open("ab")
    proc = subprocess.Popen(
        [
            _java(),
            f"-Dlogback.configurationFile={ZOOKEEPER_LOGBACK}",
            f"-Dzookeeper.log.dir={home / 'logs'}",
            "-cp",
            f"{zookeeper_lib_dir()}/*",
            ZOOKEEPER_MAIN,
            str(home / "zoo.cfg"),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (home / "logs" / "zookeeper.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "ZooKeeper did not open its TLS port"
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        out.close()


@contextmanager
def compose_zookeeper(home: Path) -> Iterator[dict[str, Any]]:
    """:func:`prepare` then :func:`running`: {"home", "port", "compose"}."""
    prepared = prepare(home)
    with running(home, prepared["port"]):
        yield prepared
