"""Structured logging: one JSON object (or logfmt line) a log record, on stderr.

`setup_logging()` is called once by `cascade serve`. Every line carries `ts`
(RFC 3339 UTC, milliseconds), `level`, `logger` and `msg`; fields passed as
`extra={...}` become keys of their own, and `request_id` is added while a
request has bound one (`request_id_var`, set by the HTTP layer). The level
comes from `CASCADE_LOG_LEVEL` (default INFO), the format from
`CASCADE_LOG_FORMAT` (`json`, the default, or `logfmt`).

The `log` delivery provider writes one JSON object a message on
`cascade.delivery`; those are spliced into the line as fields instead of
being quoted inside `msg`, so each delivery stays one flat JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import IO, Any, Mapping

__all__ = ["JsonFormatter", "LOG_FORMATS", "LogfmtFormatter", "request_id_var", "setup_logging"]

LOG_FORMATS = ("json", "logfmt")  # CASCADE_LOG_FORMAT; another value is a config error (config.py)

request_id_var: ContextVar[str | None] = ContextVar("cascade_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _timestamp(created: float) -> str:
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            out[key] = value
    if "request_id" not in out:
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
    return out


class JsonFormatter(logging.Formatter):
    """One compact JSON object a record; exceptions as an `exc` string."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg
        if (record.name == "cascade.delivery" and not record.args and isinstance(msg, str)
                and msg.startswith("{") and msg.endswith("}") and record.exc_info is None):
            # Already a JSON object: splice our fields in front (no re-parse).
            head = json.dumps({"ts": _timestamp(record.created), "level": record.levelname.lower(),
                               "logger": record.name}, ensure_ascii=False)
            return head[:-1] + (", " + msg[1:] if len(msg) > 2 else "}")
        out = _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class LogfmtFormatter(logging.Formatter):
    """`key=value` pairs, values quoted when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        out = _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in out.items())


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def setup_logging(environ: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger to one structured handler on stderr; returns it."""
    env = os.environ if environ is None else environ
    level_name = env.get("CASCADE_LOG_LEVEL", "INFO").strip().upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.INFO
    fmt = env.get("CASCADE_LOG_FORMAT", "json").strip().lower()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if not isinstance(logging.getLevelName(level_name), int):
        logging.getLogger("cascade").warning("CASCADE_LOG_LEVEL %r is not a level; using INFO", level_name,
                                             extra={"event": "config"})
    return handler
