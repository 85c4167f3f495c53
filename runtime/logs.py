"""Logging setup: human-readable text or one JSON object per line (`app.log_format`)."""

from __future__ import annotations

import json
import logging
import sys
import time

from config.models import AppConfig


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, and any `extra` fields."""

    _skip = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._skip and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(app: AppConfig) -> None:
    """Configure the `contextstream` loggers once (idempotent); secrets are never logged."""
    root = logging.getLogger("contextstream")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if app.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(app.log_level)
    root.propagate = False
