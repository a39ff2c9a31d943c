"""Structured logging: JSON lines, or readable console output on a TTY.

Every event is one line. Actors and supervisors bind their ids (``account``,
``actor``, ``supervisor``, ``child``) so a line can be traced to its source.
Tokens are never passed to the logger; :func:`redact` masks any key that
looks like a secret as a second line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("token", "secret", "password", "authorization")


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values of keys that name a secret."""
    for key in list(event):
        if any(part in key.lower() for part in _SECRET_KEYS):
            event[key] = "***"
    return event


class ToStructlog(logging.Handler):
    """Standard ``logging`` records (hypercorn's error log, libraries) as structlog events.

    One event per record, on one line: an exception is summarised as ``error`` ("Type:
    message") rather than printed as a multi-line traceback.
    """

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info is not None and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = f"{type(error).__name__}: {error}"
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)


def route_stdlib_logging() -> None:
    """Send every standard ``logging`` record (warnings and up) through structlog."""
    root = logging.getLogger()
    if not any(isinstance(handler, ToStructlog) for handler in root.handlers):
        root.addHandler(ToStructlog())
    root.setLevel(logging.WARNING)


def configure(*, level: str = "info", json: bool | None = None) -> None:
    """Configure structlog once for the process, and route stdlib logging through it."""
    route_stdlib_logging()
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
