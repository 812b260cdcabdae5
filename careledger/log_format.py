"""How careledger logs: one line per record, as text or as JSON (``Settings.log_format``).

JSON lines carry ``time`` (UTC, RFC 3339 with microseconds), ``level``, ``logger``,
``message`` (the formatted message, arguments applied), ``process`` and, for an
exception, ``exception`` (its traceback as one string): what log shippers index without
a parsing rule. Messages are what the code logs; careledger never logs patient
identifiers. Control characters in a text line are shown escaped
(``careledger.safe_text``), so a value from a source cannot forge or hide a line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Final

from careledger.safe_text import display

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class SafeTextFormatter(logging.Formatter):
    """The text format, control characters of the message shown escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = display(record.message)
        return super().formatMessage(record)


def configure_logging(log_format: str = "text", *, level: int = logging.INFO) -> None:
    """The root logger: one handler on stderr in ``log_format`` (replacing any)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else SafeTextFormatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
