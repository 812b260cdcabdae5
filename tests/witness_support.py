"""Test support for the witness: a log that signs C2SP checkpoints of an RFC 6962 tree,
and processes of ``careledger witness`` and of an unmodified ``litewitness``.

``TestLog`` plays the log side with careledger_core only: leaf hashes, ``merkle_root``,
``consistency_proof``, ``sign_note`` with the key name = the origin (as litewitness
requires). Branches (a fork, a rewritten history) are other leaf lists sharing a prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from careledger.config import PROJECT_ROOT
from careledger_core.checkpoint import Checkpoint, format_checkpoint, sign_note
from careledger_core.hashing import leaf_hash
from careledger_core.merkle import consistency_proof, merkle_root
from careledger_core.signing import SigningKey, format_private_key, format_public_key
from careledger_core.witness import ED25519_ALGORITHM, format_add_checkpoint, format_vkey

WITNESS_BIN = PROJECT_ROOT / "deploy" / "witness" / "bin"
LITEWITNESS = WITNESS_BIN / "litewitness"
WITNESSCTL = WITNESS_BIN / "witnessctl"


def seeded_key(label: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


def leaves(tag: str, n: int, start: int = 0) -> list[bytes]:
    return [leaf_hash(f"{tag}-{i}".encode()) for i in range(start, start + n)]


@dataclass
class TestLog:
    """A log: origin, key (named after the origin), and its leaf hashes."""

    __test__ = False  # not a pytest class

    origin: str
    key: SigningKey = field(default_factory=lambda: seeded_key("witness test log"))
    leaves: list[bytes] = field(default_factory=list)
    extensions: tuple[str, ...] = ()

    def grow(self, n: int, tag: str = "leaf") -> None:
        self.leaves.extend(leaves(tag, n, len(self.leaves)))

    @property
    def vkey(self) -> str:
        return format_vkey(self.origin, ED25519_ALGORITHM, self.key.public_key)

    @property
    def key_literal(self) -> str:
        return format_public_key(self.key.public_key)

    def body(self, size: int, tree: Sequence[bytes] | None = None) -> str:
        tree = self.leaves if tree is None else tree
        cp = Checkpoint(self.origin, size, merkle_root(tree[:size]), self.extensions)
        return format_checkpoint(cp)

    def note(self, size: int, tree: Sequence[bytes] | None = None) -> str:
        return sign_note(self.body(size, tree), self.origin, self.key)

    def proof(self, old: int, new: int, tree: Sequence[bytes] | None = None) -> tuple[bytes, ...]:
        tree = self.leaves if tree is None else tree
        return consistency_proof(tree[:new], old)

    def request(self, old: int, new: int, tree: Sequence[bytes] | None = None) -> bytes:
        return format_add_checkpoint(old, self.proof(old, new, tree), self.note(new, tree))


# ------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str | None
    body: bytes


def post(port: int, body: bytes, path: str = "/add-checkpoint") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body)
        r = conn.getresponse()
        return Answer(r.status, r.getheader("content-type"), r.read())
    finally:
        conn.close()


def get(port: int, path: str) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return Answer(r.status, r.getheader("content-type"), r.read())
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


# ------------------------------------------------------------ careledger witness


def write_logs_file(path: Path, logs: Sequence[TestLog], *, use_vkey: bool = False) -> Path:
    lines = []
    for lg in logs:
        key = lg.vkey if use_vkey else lg.key_literal
        lines += ["[[log]]", f"origin = {json.dumps(lg.origin)}", f"keys = [{json.dumps(key)}]", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class WitnessProcess:
    """``careledger witness`` as a real process (SIGKILL-able and restartable)."""

    directory: Path
    name: str
    key: SigningKey
    logs_file: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def env(self) -> dict[str, str]:
        key_file = self.directory / "witness.key"
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(format_private_key(self.key))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
        env.update(
            CARELEDGER_RUN_DIR=str(self.directory / "run"),
            CARELEDGER_WITNESS_NAME=self.name,
            CARELEDGER_WITNESS_SIGNING_KEY=str(key_file),
            CARELEDGER_WITNESS_LOGS_FILE=str(self.logs_file),
            CARELEDGER_WITNESS_STATE_DIR=str(self.state_dir),
            CARELEDGER_WITNESS_PORT=str(self.port),
        )
        return env

    def start(self, timeout: float = 30.0) -> None:
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        log = (self.directory / "witness.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "witness", "--ready-file", str(ready)],
            cwd=PROJECT_ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"careledger witness exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("careledger witness did not become ready")
            time.sleep(0.05)
        self.port = int(json.loads(ready.read_text())["port"])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "commands.cli", "witness", *args],
            cwd=PROJECT_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )


@contextlib.contextmanager
def careledger_witness(
    directory: Path, name: str, key: SigningKey, logs: Sequence[TestLog]
) -> Iterator[WitnessProcess]:
    directory.mkdir(parents=True, exist_ok=True)
    logs_file = write_logs_file(directory / "logs.toml", logs)
    w = WitnessProcess(directory, name, key, logs_file)
    w.start()
    try:
        yield w
    finally:
        w.stop()


# --------------------------------------------------------------- litewitness


def openssh_private_key(key: SigningKey) -> bytes:
    sk = Ed25519PrivateKey.from_private_bytes(key.seed)
    return sk.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())


@dataclass
class LiteWitness:
    """An unmodified litewitness (filippo.io/torchwood v0.6.1) with its own ssh-agent."""

    directory: Path
    name: str
    key: SigningKey
    port: int = 0
    agent: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    socket_dir: Path | None = None

    @property
    def db(self) -> Path:
        return self.directory / "litewitness.db"

    def ctl(self, *args: str) -> str:
        out = subprocess.run(
            [str(WITNESSCTL), *args], capture_output=True, text=True, timeout=60, check=True
        )
        return out.stdout + out.stderr

    def add_log(self, log: TestLog) -> None:
        self.ctl("add-log", "-db", str(self.db), "-origin", log.origin)
        self.ctl("add-key", "-db", str(self.db), "-origin", log.origin, "-key", log.vkey)

    def start(self) -> None:
        # a short path: unix socket paths are limited to ~100 bytes
        self.socket_dir = Path(tempfile.mkdtemp(prefix="lw", dir="/tmp"))
        sock = self.socket_dir / "agent.sock"
        key_file = self.socket_dir / "witness.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(openssh_private_key(self.key))
        log = (self.directory / "ssh-agent.log").open("ab")
        self.agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(sock)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or self.agent.poll() is not None:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.05)
        # the socket file exists once the agent has bound it, a moment before it
        # listens: ssh-add then cannot connect (exit 2), so it is tried again
        while True:
            added = subprocess.run(
                ["ssh-add", str(key_file)],
                env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                capture_output=True,
                timeout=30,
            )
            if added.returncode != 2 or time.monotonic() > deadline:
                added.check_returncode()
                break
            time.sleep(0.05)
        key_id = hashlib.sha256(self.key.public_key.raw).hexdigest()
        self.port = free_port()
        log = (self.directory / "litewitness.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(LITEWITNESS),
                "-db",
                str(self.db),
                "-ssh-agent",
                str(sock),
                "-name",
                self.name,
                "-key",
                key_id,
                "-listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        for proc in (self.proc, self.agent):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def litewitness_missing() -> str | None:
    """Why litewitness cannot run here (None when it can)."""
    for path in (LITEWITNESS, WITNESSCTL):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run deploy/bootstrap.sh (it builds torchwood v0.6.1)"
    for tool in ("ssh-agent", "ssh-add"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install openssh-client"
    return None


@contextlib.contextmanager
def litewitness(
    directory: Path, name: str, key: SigningKey, logs: Sequence[TestLog]
) -> Iterator[LiteWitness]:
    directory.mkdir(parents=True, exist_ok=True)
    lw = LiteWitness(directory, name, key)
    for lg in logs:
        lw.add_log(lg)
    lw.start()
    try:
        yield lw
    finally:
        lw.stop()
