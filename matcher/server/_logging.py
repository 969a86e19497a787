"""The operator's logs: text (as always) or JSON lines (``matcher serve --log-format json``).

A JSON line holds ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus the
structured fields of :data:`FIELDS` that the call passed with ``extra=fields(...)``::

    log.info("job %s for %s released", job_id, name, extra=fields(job_id=job_id, merchant=name,
             outcome="released", duration=12.5))

What a log line may hold is what the platform may see: job ids, merchant names, list sizes, ε,
durations, reason codes. Never a member or merchant ID, a token, or a count the policy has not
released (a match count, a slice's true size, an unnoised aggregate).
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import IO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
# The structured fields a JSON line carries when the call gave them.
FIELDS = ("job_id", "merchant", "kind", "protocol", "phase", "duration", "outcome", "reason", "phases")


def fields(**values) -> dict:
    """The ``extra=`` of a log call: the given structured fields, those that are None left out."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields: {', '.join(sorted(unknown))}")
    return {key: value for key, value in values.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if key in record.__dict__:
                line[key] = record.__dict__[key]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` ("text" or "json")."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    out = logging.StreamHandler(stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(log_format: str = "text", level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send every logger's records (matcher's, grpc's) through one handler of ``log_format``,
    replacing the root logger's handlers."""
    logging.basicConfig(level=level, handlers=[handler(log_format, stream)], force=True)
