"""Billing support's discovery routes: ``GET /v1/accounts`` (the accounts the store knows)
and ``GET /v1/accounts/{account}/usage/summary`` (every meter's usage with totals, by
minute to calendar month).

Declared like every route (:mod:`.operations`): the admin token, then the query
(:class:`.models.AccountsQuery`), then the answer (:class:`.answers.AccountList`). The page
is read from the store's ``accounts`` table on a reader thread, by id from the cursor on;
``awake`` says whether the account's meter actor runs now (the registry, no wake-up).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from starlette.responses import Response

from meterd.accounts.aggregate import Dims, State
from meterd.billing import Period
from meterd.model import Meter, Quantity, Window, canonical_quantity

from . import answers
from .answers import json_answer
from .daemon import Daemon
from .errors import ApiError
from .models import AccountPath, AccountsQuery, SummaryQuery
from .operations import ACCOUNT, Operations, every_shard

ops = Operations()


@ops.get(
    "/v1/accounts",
    "accounts",
    "The accounts the store has seen, by id, paged; search keeps those whose id contains the text.",
    answers={200: (answers.AccountList, "One page of accounts.")},
    errors=(400, 401, 500),
    scope=every_shard("accounts"),
)
async def accounts(daemon: Daemon, query: AccountsQuery) -> Response:
    found, more = await daemon.store.reader.account_page(query.search, query.after, query.limit)
    registry = daemon.accounts.registry
    return json_answer(
        answers.AccountList(
            accounts=[
                answers.AccountEntry(account=account, awake=account in registry, updated_at=at)
                for account, at in found
            ],
            next_after=more,
        )
    )


# ---- every meter's usage, with totals and calendar months ------------------------------------


def align(window: str, time_ms: int) -> int:
    """The start of the ``window`` (minute, hour, day, or calendar month UTC) ``time_ms``
    falls in."""
    if window == "month":
        return Period.containing(time_ms).start_ms
    return Window(window).align(time_ms)


def bucket_end(window: str, start: int) -> int:
    if window == "month":
        return Period.containing(start).end_ms
    return start + Window(window).ms


def summarise(
    meter: Meter, cells: Sequence[tuple[int, Dims, State]], window: str
) -> tuple[list[tuple[int, int, Quantity]], Quantity | None]:
    """``cells`` (minute states, by start) merged per ``window`` and over all of them, by the
    meter's own monoid (a month of ``unique_count`` is the size of the union, never a sum of
    daily counts). Pure: runs on a worker thread."""
    rows: dict[int, State] = {}
    total: State | None = None
    for start, _dims, state in cells:
        key = align(window, start)
        have = rows.get(key)
        rows[key] = state.copy() if have is None else have
        if have is not None:
            have.merge_from(state)
        if total is None:
            total = state.copy()
        else:
            total.merge_from(state)
    out = [
        (start, bucket_end(window, start), state.value())
        for start, state in sorted(rows.items())
        if not state.empty
    ]
    return out, None if total is None or total.empty else total.value()


@ops.get(
    "/v1/accounts/{account}/usage/summary",
    "usageSummary",
    "Every meter's usage of one account (or one meter's) per window, minute to calendar"
    " month, each with its total over the range, exact.",
    answers={200: (answers.UsageSummary, "Each meter with its rows and total.")},
    errors=(400, 401, 404, 500, 503),
    scope=ACCOUNT,
)
async def usage_summary(daemon: Daemon, path: AccountPath, query: SummaryQuery) -> Response:
    meters = daemon.accounts.meters
    if query.meter is not None and query.meter not in meters:
        raise ApiError(404, "unknown_meter", f"no meter named {query.meter!r}")
    await daemon.known_account(path.account)
    # The windows that overlap [from, to): from aligned down, to up to its window's end.
    low = align(query.window, query.from_)
    high = (
        query.to if query.to == low else bucket_end(query.window, align(query.window, query.to - 1))
    )
    high = max(high, low)
    found: list[answers.MeterUsage] = []
    for meter in meters.values():
        if query.meter is not None and meter.name != query.meter:
            continue
        cells = await daemon.accounts.states(path.account, meter, low, high)
        rows, total = await trio.to_thread.run_sync(summarise, meter, cells, query.window)
        del cells
        found.append(
            answers.MeterUsage(
                meter=meter.name,
                aggregation=meter.aggregation.value,
                unit=meter.units,
                rows=[
                    answers.UsageRow(start=start, end=end, value=canonical_quantity(value))
                    for start, end, value in rows
                ],
                total=None if total is None else canonical_quantity(total),
            )
        )
    return json_answer(
        answers.UsageSummary(
            account=path.account,
            window=query.window,
            from_=low,
            to=high,
            meters=found,
        )
    )


__all__ = ["ops", "summarise"]
