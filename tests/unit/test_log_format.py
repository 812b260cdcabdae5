"""Logs as text or JSON lines (issue 13 point 5), never with raw control characters.

Before: every command and service logged plain text only, and the demo's processor
log held a terminal escape sequence (mode's colour formatter, which the faust worker
installed over ours). Now ``log_format = "json"`` gives one JSON object per line, the
text format shows control characters escaped, and the processor keeps careledger's
logging (``override_logging=False``; its log is read in
tests/integration/test_recreated_topic.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from careledger.config import ConfigError, load_settings
from careledger.log_format import TEXT_FORMAT, JsonFormatter, SafeTextFormatter

ROOT = Path(__file__).resolve().parents[2]


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("careledger.test", logging.WARNING, __file__, 1, msg, args, info)


def test_a_json_line_is_one_object_with_the_message_formatted() -> None:
    line = JsonFormatter().format(_record("chain %s: %d rows\nforged line", "c/0", 3, exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "careledger.test"
    assert doc["message"] == "chain c/0: 3 rows\nforged line"  # escaped by JSON, one line
    assert "ValueError: boom" in doc["exception"]
    assert doc["time"].endswith("Z") and doc["process"] == os.getpid()


def test_a_text_line_shows_control_characters_escaped() -> None:
    out = SafeTextFormatter(TEXT_FORMAT).format(_record("actor %s", "E1\r\n\x1b[2Jforged"))
    assert "\x1b" not in out and "\r" not in out and "\n" not in out
    assert "E1\\r\\n\\x1b[2Jforged" in out


def test_an_unknown_log_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(env={"CARELEDGER_LOG_FORMAT": "xml"})


def test_a_command_logs_json_lines_when_asked(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")} | {
        "CARELEDGER_RUN_DIR": str(tmp_path),
        "CARELEDGER_KAFKA_PORT": str(closed),
        "CARELEDGER_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-m", "commands.cli", "-v", "dead-letters"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    logged = [json.loads(line) for line in lines[:-1]]
    assert logged, "with -v, librdkafka's lines are logged"
    assert {d["level"] for d in logged} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    assert lines[-1].startswith("careledger dead-letters: cannot reach Kafka")
