"""Times on the operator command line, and times and durations for people.

A time option takes either

* **epoch milliseconds** — an integer, Unix time in ms, UTC (what the API speaks), or
* **ISO-8601** — ``2026-11-25``, ``2026-11-25T13:00``, ``2026-11-25T13:00:00.250Z``,
  ``2026-11-25 14:00+01:00``; without a zone it is **UTC** (never the local zone, so a
  command means the same on every host).

Conversions are integer arithmetic on :class:`datetime.timedelta`, so no millisecond is
lost or rounded; a time with a fraction of a millisecond is refused, not rounded.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIME_HELP = "epoch milliseconds, or ISO-8601 (no zone = UTC)"
_MS = re.compile(r"-?[0-9]+")
# Before 1973-03-03 in milliseconds, but a plausible time in seconds: a likely slip.
_SECONDS_LIKE = range(10**8, 10**11)


def parse_time(text: str) -> int:
    """``text`` (epoch ms or ISO-8601, see the module doc) as epoch milliseconds.

    Raises :class:`ValueError` saying what is wrong.
    """
    text = text.strip()
    if _MS.fullmatch(text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither epoch milliseconds nor an ISO-8601 time"
            " (e.g. 2026-11-25T13:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.microsecond % 1000:
        raise ValueError(f"{text!r} has a fraction of a millisecond; times are whole milliseconds")
    return to_ms(moment - EPOCH)


def to_ms(delta: timedelta) -> int:
    """``delta`` in whole milliseconds (exact: integer arithmetic)."""
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


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


def humanise(ms: int) -> str:
    """A duration in its two largest units: ``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``,
    ``250ms``."""
    if ms < 0:
        return "-" + humanise(-ms)
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or parts:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


class TimeParam(click.ParamType[int, object]):
    """A click parameter holding a time (see the module doc) as epoch milliseconds."""

    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            ms = parse_time(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if ms in _SECONDS_LIKE and _MS.fullmatch(str(value).strip()):
            name = param.opts[0] if param is not None and param.opts else "time"
            click.echo(
                f"meterd: warning: {name} {value} is read as epoch milliseconds"
                f" ({format_time(ms)}); for seconds append 000",
                err=True,
            )
        return ms


TIME = TimeParam()
