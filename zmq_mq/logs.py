"""Log formatting for the processes zmq-mq starts: ``zmq-mq hub`` and ``zmq-mq run``.

Logs go to stderr, as ``text`` for people or ``json`` (one object per line) for log shippers.
A neutral module (it imports neither the hub nor the client library), so the hub's command, the
actor runner's command and a user's own program can all format their logs the same way.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys

LOG_FORMATS = ("text", "json")  # what --log-format accepts
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``message``, and
    ``exc`` with the traceback when there is one; for log shippers (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Send this process's logs to stderr at ``level`` (debug, info, warning, error; unknown
    names mean info), formatted as ``fmt``: ``text`` or ``json`` (see :data:`LOG_FORMATS`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
