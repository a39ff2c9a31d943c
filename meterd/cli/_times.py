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

import click

from meterd.isotime import EPOCH, format_time, parse_time, to_ms

__all__ = [
    "EPOCH",
    "TIME",
    "TIME_HELP",
    "TimeParam",
    "format_time",
    "humanise",
    "parse_time",
    "to_ms",
]

TIME_HELP = "epoch milliseconds, or ISO-8601 (no zone = UTC)"
_MS = re.compile(r"-?[0-9]+")
# Before 1973-03-03 in milliseconds, but a plausible time in seconds: a likely slip.
_SECONDS_LIKE = range(10**8, 10**11)


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
