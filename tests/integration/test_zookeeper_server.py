"""The local cluster's standalone ZooKeeper (ADR 0030) as a real JVM process: it starts,
serves, is found again instead of started twice, refuses a port held by something else,
and stops. Checked with ZooKeeper's own four-letter words (no Python ZooKeeper client)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.stack import zookeeper_server as zk
from careledger.stack.model import StackError
from careledger.stack.processes import _alive, _port_open


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mntr(port: int) -> dict[str, str]:
    answer = zk.four_letter_word(port, "mntr")
    assert answer is not None
    return dict(line.split("\t", 1) for line in answer.splitlines() if "\t" in line)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, Path, int, int]]:
    directory, logs, port = tmp_path / "zookeeper", tmp_path / "logs", _free_port()
    pid = zk.start_zookeeper(directory, logs, port, quiet=True)
    assert pid is not None
    try:
        zk.wait_zookeeper(port, pid, logs)
        yield directory, logs, port, pid
    finally:
        zk.stop_zookeeper(directory)


def test_it_starts_serves_standalone_on_loopback_and_stops(
    server: tuple[Path, Path, int, int],
) -> None:
    directory, logs, port, pid = server
    assert zk.zookeeper_ready(port)
    assert zk.four_letter_word(port, "ruok") == "imok"
    srvr = zk.four_letter_word(port, "srvr")
    assert srvr is not None and srvr.startswith(f"Zookeeper version: {zk.ZOOKEEPER_VERSION}-")
    assert "Mode: standalone" in srvr.splitlines()
    stats = _mntr(port)
    assert stats["zk_server_state"] == "standalone"
    assert int(stats["zk_znode_count"]) >= 1  # the root and /zookeeper's own nodes
    # only the whitelisted words are answered
    assert "not in the whitelist" in (zk.four_letter_word(port, "conf") or "")
    # loopback only, state and logs where they were asked for
    cfg = (directory / "zoo.cfg").read_text()
    assert "clientPortAddress=127.0.0.1" in cfg and "admin.enableServer=false" in cfg
    assert list((directory / "data").iterdir()), "no data written under the directory"
    assert "binding to port" in (logs / "zookeeper" / "zookeeper.log").read_text()
    out = (logs / "zookeeper.out").read_text()
    # stdout gets nothing but _spawn's header line (ERROR and above only)
    assert [line for line in out.splitlines() if line.strip()] == [
        line for line in out.splitlines() if line.startswith("=== ")
    ], out

    assert zk.stop_zookeeper(directory) is True
    assert not _alive(pid)
    assert not (directory / "zookeeper.pid").exists()
    assert not _port_open("127.0.0.1", port)
    assert not zk.zookeeper_ready(port)
    assert zk.stop_zookeeper(directory) is False  # nothing of ours left to stop


def test_a_second_start_while_running_is_a_no_op(server: tuple[Path, Path, int, int]) -> None:
    directory, logs, port, pid = server
    assert zk.start_zookeeper(directory, logs, port, quiet=True) is None
    assert (directory / "zookeeper.pid").read_text().strip() == str(pid)
    # another careledger directory pointed at the same port uses the ZooKeeper there
    other = directory.parent / "other"
    assert zk.start_zookeeper(other, logs, port, quiet=True) is None
    assert not (other / "zookeeper.pid").exists()
    assert zk.stop_zookeeper(other) is False  # not ours there: left alone
    assert zk.zookeeper_ready(port) and _alive(pid)


def test_a_port_held_by_something_else_is_refused(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])

        def answer_garbage() -> None:
            for _ in range(4):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        assert not zk.zookeeper_ready(port)
        with pytest.raises(StackError, match="not a serving ZooKeeper"):
            zk.start_zookeeper(tmp_path / "zookeeper", tmp_path / "logs", port, quiet=True)
    assert not (tmp_path / "zookeeper" / "zookeeper.pid").exists()


def test_a_server_that_dies_during_startup_is_reported(tmp_path: Path) -> None:
    import os
    import signal

    directory, logs, port = tmp_path / "zookeeper", tmp_path / "logs", _free_port()
    pid = zk.start_zookeeper(directory, logs, port, quiet=True)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(StackError, match="ZooKeeper exited during startup"):
        zk.wait_zookeeper(port, pid, logs, timeout=30)
    assert zk.stop_zookeeper(directory) is False


def test_stop_never_signals_a_process_that_is_not_our_zookeeper(tmp_path: Path) -> None:
    """A stale pid file naming a pid now reused by another process (here: this test run)."""
    import os

    directory = tmp_path / "zookeeper"
    directory.mkdir()
    (directory / "zookeeper.pid").write_text(f"{os.getpid()}\n")
    assert zk.stop_zookeeper(directory) is False
    assert not (directory / "zookeeper.pid").exists()


def test_a_half_started_server_is_not_ready_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without snappy-java the server's main thread dies loading its database, yet the
    JVM lives on and answers ``ruok`` with ``imok``: readiness must not believe it."""
    lib_root = tmp_path / "lib"
    lib = lib_root / zk.ZOOKEEPER_VERSION
    lib.mkdir(parents=True)
    for jar in zk.zookeeper_lib_dir().glob("*.jar"):
        if not jar.name.startswith("snappy-java-"):
            (lib / jar.name).symlink_to(jar)
    (lib / ".complete").write_text(f"{zk.ZOOKEEPER_VERSION}\n")
    monkeypatch.setattr(zk, "ZOOKEEPER_LIB_ROOT", lib_root)
    # as a copy the install took for complete (since the pins changed, a copy missing a
    # pinned jar is fetched again, which would heal this one before it starts)
    monkeypatch.setattr(zk, "install_zookeeper", lambda *_a, **_k: lib)

    directory, logs, port = tmp_path / "zookeeper", tmp_path / "logs", _free_port()
    pid = zk.start_zookeeper(directory, logs, port, quiet=True)
    assert pid is not None
    try:
        with pytest.raises(StackError, match="failed during startup and does not serve"):
            zk.wait_zookeeper(port, pid, logs, timeout=60)
        assert _alive(pid)
        assert zk.four_letter_word(port, "ruok") == "imok"
        assert not zk.zookeeper_ready(port)
    finally:
        assert zk.stop_zookeeper(directory) is True
    assert not _alive(pid)
