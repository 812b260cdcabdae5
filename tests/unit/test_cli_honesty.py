"""The CLI never gives a false all-clear, a traceback or raw client noise (issue 13).

Tried as a privacy analyst would, with Kafka and ClickHouse down: ``dead-letters``
printed a raw librdkafka line and "0 dead-letter record(s)", exit 0; ``access-report``
printed a 14-line clickhouse-driver traceback before its one line; a bad date printed
Python's strptime message; ``--json | head`` raised BrokenPipeError; there was no
``--version``. Each test runs the real command against ports nothing listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import commands.cli as cli
from careledger.config import Settings
from careledger_core.signing import SigningKey, format_public_key

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
        | {
            "CARELEDGER_RUN_DIR": str(tmp_path / "run"),
            "CARELEDGER_KAFKA_PORT": str(_closed_port()),
            "CARELEDGER_CLICKHOUSE_PORT": str(_closed_port()),
            "CARELEDGER_CLICKHOUSE_HTTP_PORT": str(_closed_port()),
        }
        | (extra_env or {})
    )
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_exit_2(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"careledger {command}: "), lines[0]
    assert "Traceback" not in result.stderr and "rdkafka" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("extra", [["--quarantine"], ["--json"]])
def test_dead_letters_with_kafka_down_is_no_false_all_clear(
    tmp_path: Path, extra: list[str]
) -> None:
    result = _run(tmp_path, "dead-letters", *extra)
    line = _one_line_exit_2(result, "dead-letters")
    assert "cannot reach Kafka" in line
    assert result.stdout == "", "nothing that could read as a (possibly empty) listing"


def test_access_report_with_clickhouse_down_says_one_line_without_a_traceback(
    tmp_path: Path,
) -> None:
    result = _run(
        tmp_path,
        "access-report",
        "--patient",
        "example",
        "--from",
        "2026-01-01",
        "--to",
        "2026-02-01",
    )
    line = _one_line_exit_2(result, "access-report")
    assert "ClickHouse" in line


def test_benchmark_verify_on_the_ledger_with_clickhouse_down_says_one_line(
    tmp_path: Path,
) -> None:
    """``benchmark-verify --ledger`` runs the real verify: with ClickHouse down it says
    verify's own line, exit 2, and prints no figures."""
    key = SigningKey.from_seed(bytes(32)).public_key
    result = _run(
        tmp_path,
        "benchmark-verify",
        "--ledger",
        extra_env={
            "CARELEDGER_TRUSTED_KEYS": format_public_key(key),
            "CARELEDGER_TRUSTED_REGISTRAR_KEYS": format_public_key(key),
        },
    )
    line = _one_line_exit_2(result, "benchmark-verify")
    assert "verify exited 2: careledger verify: " in line and "ClickHouse" in line
    assert result.stdout == ""


@pytest.mark.parametrize("bad", ["2026-13-01", "2026-02-30", "2026-01-01T25:00:00Z"])
def test_an_impossible_date_is_said_plainly(tmp_path: Path, bad: str) -> None:
    result = _run(
        tmp_path, "access-report", "--patient", "example", "--from", bad, "--to", "2027-01-01"
    )
    line = _one_line_exit_2(result, "access-report")
    assert f"'{bad}' is not a real date or time" in line
    assert "does not match format" not in line and "unconverted" not in line


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("careledger ") and result.stdout.split()[1] != ""


def test_a_reader_that_goes_away_ends_the_command_quietly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``careledger alerts list --json | head``: ``print`` raises BrokenPipeError once
    ``head`` has exited; the command stops with SIGPIPE's status and no traceback."""

    class _Module:
        @staticmethod
        def command_status(_args: object, _settings: Settings) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    read, write = os.pipe()
    saved = os.dup(1)
    monkeypatch.setattr(cli, "_module_for", lambda _name: _Module)
    monkeypatch.setenv("CARELEDGER_RUN_DIR", str(tmp_path))
    try:
        os.dup2(write, 1)
        code = cli.main(["status"])
        os.write(1, b"x")  # stdout now goes to /dev/null: writing no longer raises
    finally:
        os.dup2(saved, 1)
        for fd in (read, write, saved):
            os.close(fd)
    assert code == cli.EXIT_BROKEN_PIPE


def test_one_shot_commands_hide_librdkafka_lines_services_keep_them() -> None:
    import logging

    for name in ("careledger.kafka.rdkafka", "careledger.producer.rdkafka"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    cli._quiet_clients("process")
    assert logging.getLogger("careledger.kafka.rdkafka").getEffectiveLevel() < logging.CRITICAL
    cli._quiet_clients("dead-letters")
    assert logging.getLogger("careledger.kafka.rdkafka").level == logging.CRITICAL
    assert logging.getLogger("careledger.producer.rdkafka").level == logging.CRITICAL
    assert logging.getLogger("clickhouse_driver").level == logging.CRITICAL
    assert set(cli.COMMANDS) >= cli.ONE_SHOT, sorted(cli.ONE_SHOT - set(cli.COMMANDS))
    for name in ("careledger.kafka.rdkafka", "careledger.producer.rdkafka", "clickhouse_driver"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_the_demo_and_the_benchmarks_hide_librdkafka_lines_too() -> None:
    """Seen in ``careledger benchmark``'s output on a freshly started broker: a raw
    librdkafka warning (GETPID ... Coordinator load in progress: retrying)."""
    import logging

    loggers = (
        "careledger.kafka.rdkafka",
        "careledger.producer.rdkafka",
        "careledger.gateway.rdkafka",
    )
    benchmarks = {name for name in cli.COMMANDS if name.startswith("benchmark")}
    assert benchmarks and benchmarks | {"demo"} == set(cli.AT_A_TERMINAL)
    try:
        for command in sorted(cli.AT_A_TERMINAL):
            for name in loggers:
                logging.getLogger(name).setLevel(logging.NOTSET)
            cli._quiet_clients(command)
            for name in loggers:
                assert logging.getLogger(name).level == logging.CRITICAL, (command, name)
        for name in loggers:
            logging.getLogger(name).setLevel(logging.NOTSET)
        for service in ("process", "gateway", "audit"):
            cli._quiet_clients(service)
            assert all(logging.getLogger(n).level == logging.NOTSET for n in loggers), service
    finally:
        for name in (*loggers, "clickhouse_driver"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_alerts_forward_with_kafka_down_says_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path, "alerts", "forward", "--syslog", "localhost:6514")
    line = _one_line_exit_2(result, "alerts forward")
    assert "cannot reach Kafka" in line
    assert "forwarded" not in result.stdout


@pytest.mark.parametrize("size", [["--staff", "3"], ["--patients", "0"], ["--events", "-1"]])
def test_a_demo_hospital_too_small_is_refused_before_anything_starts(
    tmp_path: Path, size: list[str]
) -> None:
    result = _run(tmp_path, "demo", *size)
    line = _one_line_exit_2(result, "demo")
    assert "at least" in line
    assert result.stdout == "", "nothing started"
    assert not (tmp_path / "run" / "kafka").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
    ],
)
def test_a_reader_of_events_in_clear_refuses_a_sealed_ledger_in_one_line(
    tmp_path: Path, argv: list[str]
) -> None:
    """Until they open sealed parts through the key store (ADR 0037), a command that
    reads access events in clear would find none on a sealed ledger: an empty report
    would be a false all-clear."""
    result = _run(tmp_path, *argv, extra_env={"CARELEDGER_SEAL_EVENTS": "true"})
    line = _one_line_exit_2(result, argv[0])
    assert "not yet available on a sealed ledger" in line
    assert set(cli.NOT_ON_SEALED_LEDGER) == {"demo"}


def test_consent_load_on_a_sealed_ledger_without_the_ingest_key_refuses_in_one_line(
    tmp_path: Path,
) -> None:
    # consent load ledgers each file's bytes as a raw record: on a sealed ledger they must
    # be sealed to the processor's ingest key, and without it nothing is sent in clear
    consent = tmp_path / "c.json"
    consent.write_text("{}")
    result = _run(
        tmp_path,
        "consent",
        "load",
        str(consent),
        "--source",
        "ehr",
        extra_env={"CARELEDGER_SEAL_EVENTS": "true"},
    )
    assert result.returncode == 2
    assert "sealed (seal_events)" in result.stderr
    assert "ingest_public_key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "command"),
    [(["migrate"], "migrate"), (["keystore", "status", "--json"], "keystore")],
)
def test_migrate_and_keystore_say_their_failure_on_stderr_not_in_their_output(
    tmp_path: Path, args: list[str], command: str
) -> None:
    """Found on 2026-12-07: both printed their one line on stdout, where `keystore status
    --json`'s reader expects JSON and a script expects the command's answer."""
    result = _run(tmp_path, *args)
    _one_line_exit_2(result, command)
    assert result.stdout == "", result.stdout
