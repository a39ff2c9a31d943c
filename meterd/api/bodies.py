"""JSON bodies more than one route answers with (protocol.md §3 shapes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meterd.model import Quantity, Window, canonical_quantity

#: ``(start, end, value, group)`` of one usage row; ``group`` is None without group_by.
UsageTuple = tuple[int, int, Quantity, dict[str, str] | None]


def usage_body(
    account: str, meter: str, window: Window, from_ms: int, to_ms: int, rows: Iterable[UsageTuple]
) -> dict[str, Any]:
    """The usage answer: ``from``/``to`` aligned down to the window, values exact strings."""
    return {
        "account": account,
        "meter": meter,
        "window": window.value,
        "from": window.align(from_ms),
        "to": window.align(to_ms),
        "rows": [
            {"start": start, "end": end, "value": canonical_quantity(value)}
            | ({} if group is None else {"group": group})
            for start, end, value, group in rows
        ],
    }
