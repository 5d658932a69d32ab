"""Python logging, configured once per process from ``Settings.logging`` (``LoggingConfig``).

Every entry point (``streamrec`` CLI, ``python -m pipelines.cli``, ``python -m pipelines.streaming``,
``python -m ray_jobs.train``) calls ``configure_logging`` first; library code only does
``logging.getLogger(__name__)``. ``format: text`` is a readable line for a terminal; ``format:
json`` (clusters) is one JSON object per line for the log collector.

Example:
    >>> from streamrec.runtime.config import LoggingConfig
    >>> configure_logging(LoggingConfig(level="DEBUG", format="json"))  # doctest: +SKIP
    >>> logging.getLogger("pipelines.runner").info("batch done", extra={"records": 12})  # doctest: +SKIP
    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "pipelines.runner", "message": "batch done", "records": 12}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from streamrec.runtime.config import LoggingConfig

__all__ = ["JsonFormatter", "TEXT_FORMAT", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as
# a field of its own.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
    record's ``extra`` fields, and ``exc_info`` / ``stack_info`` when present.

    Why a subclass of our own: the standard library has no JSON formatter, and one small class
    beats a dependency for it.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            # "_" attributes are libraries' own bookkeeping (Ray's record factory adds _ray_timestamp_ns).
            if key not in _RECORD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra value JSON cannot encode (a Path, a datetime) still gives a line.
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StreamrecHandler(logging.StreamHandler):
    """The handler ``configure_logging`` installs (told apart from others' handlers by its class).

    Without a stream of its own it writes to ``sys.stderr`` as it is at each record (as the
    standard library's last-resort handler does), not as it was when configured: a caller that
    swaps stderr (pytest's capture, a daemon redirecting it) keeps getting the lines.
    """

    def __init__(self, stream: TextIO | None = None):
        logging.Handler.__init__(self)
        self._own_stream = stream

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return self._own_stream if self._own_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._own_stream = value


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger from ``config``: its level, one handler on ``stream`` (default
    stderr: stdout stays the commands' output) with the text or JSON format, and the levels of
    the loggers named in ``config.loggers``.

    Idempotent: a second call replaces the handler of the first instead of adding another (entry
    points call one another, e.g. ``streamrec pipeline run`` and ``python -m pipelines.cli``).
    Handlers installed by others (pytest's capture, Ray's) are left alone.

    Returns:
        The installed handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StreamrecHandler)]:
        root.removeHandler(old)
    handler = _StreamrecHandler(stream)
    handler.setFormatter(JsonFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(config.level)
    for name, level in config.loggers.items():
        logging.getLogger(name).setLevel(level)
    return handler
