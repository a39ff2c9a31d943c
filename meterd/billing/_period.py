"""Billing periods: calendar months in UTC, written ``"2026-11"``."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

from meterd.model import DAY_MS

__all__ = ["Period", "date_ms"]

_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def date_ms(day: date) -> int:
    """Milliseconds since the epoch of ``day`` at 00:00 UTC."""
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """One calendar month, UTC: ``[start_ms, end_ms)``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1970 <= self.year <= 9998:
            raise ValueError(
                f"{self.year:04d}-{self.month:02d} is not a month written YYYY-MM"
                " (months 01-12, years 1970 to 9998)"
            )

    @classmethod
    def parse(cls, text: str) -> Period:
        """``"2026-11"`` -> ``Period(2026, 11)``; ``ValueError`` saying why otherwise."""
        match = _PERIOD.fullmatch(text)
        if match is None:
            raise ValueError(f"period {text!r:.40} is not a month written YYYY-MM (e.g. 2026-11)")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def containing(cls, time_ms: int) -> Period:
        """The month ``time_ms`` falls in (integer arithmetic: no float on the way)."""
        day = date.fromordinal(_EPOCH_ORDINAL + time_ms // DAY_MS)
        return cls(day.year, day.month)

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    @property
    def start_ms(self) -> int:
        return date_ms(self.first_day)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"
