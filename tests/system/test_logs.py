"""meterd.logs: standard logging records become one structlog event each."""

from __future__ import annotations

import logging

import structlog.testing

from meterd.logs import ToStructlog


def test_a_stdlib_error_with_a_traceback_is_one_event_with_the_error_summarised() -> None:
    logger = logging.getLogger("test.meterd.logs.hypercorn")
    logger.propagate = False
    handler = ToStructlog()
    logger.addHandler(handler)
    try:
        error = ValueError("bad\nthing")
        with structlog.testing.capture_logs() as events:
            logger.error("Error in ASGI Framework", exc_info=(ValueError, error, None))
    finally:
        logger.removeHandler(handler)
    assert events == [
        {
            "event": "Error in ASGI Framework",
            "log_level": "error",
            "logger": "test.meterd.logs.hypercorn",
            "error": "ValueError: bad\nthing",
        }
    ]
