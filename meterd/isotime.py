"""Times as people write them: epoch milliseconds or ISO-8601, read exactly.

One reader for the CLI's options and the API's bodies (an adjustment's ``start``), so both
take the same text the same way:

* **epoch milliseconds**: an integer, Unix time in ms, UTC;
* **ISO-8601**: ``2026-11-25``, ``2026-11-25T13:00``, ``2026-11-25T13:00:00.250Z``,
  ``2026-11-25 14:00+01:00``; without a zone it is **UTC** (never the host's zone).

Conversions are integer arithmetic on :class:`datetime.timedelta`, so no millisecond is lost
or rounded; a fraction of a millisecond is refused rather than rounded.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MS_TEXT: Final = re.compile(r"-?[0-9]+")
ISO_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
)
"""The shape of an ISO-8601 date or time this module reads (for JSON Schema): the calendar
itself (a 31st of November) is checked by :func:`parse_iso`."""


def to_ms(delta: timedelta) -> int:
    """``delta`` in whole milliseconds (exact: integer arithmetic)."""
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_iso(text: str) -> int:
    """An ISO-8601 date or time (no zone: UTC) as epoch milliseconds; :class:`ValueError`
    saying what is wrong."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 date or time (e.g. 2026-11-25 or 2026-11-25T13:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.microsecond % 1000:
        raise ValueError(f"{text!r} has a fraction of a millisecond; times are whole milliseconds")
    return to_ms(moment - EPOCH)


def parse_time(text: str) -> int:
    """``text``, epoch milliseconds or ISO-8601 (see the module doc), as epoch milliseconds.

    Raises :class:`ValueError` saying what is wrong.
    """
    text = text.strip()
    if MS_TEXT.fullmatch(text):
        return int(text)
    try:
        return parse_iso(text)
    except ValueError as error:
        if "fraction" in str(error):
            raise
        raise ValueError(
            f"{text!r} is neither epoch milliseconds nor an ISO-8601 time"
            " (e.g. 2026-11-25T13:00:00Z)"
        ) from None


def format_time(ms: int | None) -> str:
    """Epoch ``ms`` as ISO-8601 UTC (``2026-11-25T13:00:00Z``, with ``.250`` when not a
    whole second); ``-`` for None."""
    if ms is None:
        return "-"
    moment = EPOCH + timedelta(milliseconds=ms)
    text = moment.replace(tzinfo=None).isoformat(timespec="seconds")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"
