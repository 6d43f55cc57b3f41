"""Log lines for memring's three commands: one event per line, with a level, machine-readable.

Theory of operation: `configure(level, fmt)` replaces the root logger's handlers with one
stderr handler whose formatter writes each record as one line, either logfmt

    ts=2026-11-28T07:34:23.512Z level=INFO logger=memring.backend.cluster msg="leader of shard s1 (epoch 7)"

or one JSON object with the same keys. A traceback, when a record has one, goes into an
`exc` field (newlines escaped), so a line is always one event. The servers log events
(leadership, ejections, ISR and topology changes), never single requests.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("logfmt", "json")


def _timestamp(created: float) -> str:
    """UTC, millisecond precision, ISO 8601 with a Z."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{int((created - seconds) * 1000):03d}Z"


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    fields = {"ts": _timestamp(record.created), "level": record.levelname,
              "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


def logfmt_value(value: str) -> str:
    """A value as logfmt writes it: bare if it is one plain token, else double-quoted."""
    if value and not any(c in value for c in ' ="\\\n\r\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
        .replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}"
                        for key, value in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record), ensure_ascii=False)


def check(level: str, fmt: str) -> str:
    """"" if `level` and `fmt` are valid, else the message that names the problem."""
    if level.lower() not in LEVELS:
        return f"log level must be one of {', '.join(LEVELS)}, got {level!r}"
    if fmt not in FORMATS:
        return f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}"
    return ""


def configure(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Send every logger's records at `level` and above to `stream` (stderr) as `fmt`."""
    problem = check(level, fmt)
    if problem:
        raise ValueError(problem)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
