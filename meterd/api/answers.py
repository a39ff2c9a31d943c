"""What the API answers, declared once as msgspec models (protocol.md §3 shapes).

These generate the answer schemas of ``/openapi.json``. Routes of :mod:`.routes` build
them and :func:`json_answer` encodes them; billing's documents are made by
:mod:`meterd.billing` as JSON values (built and encoded off the Trio thread), held to these
models by the schemathesis test and by ``tests/api/test_billing_api.py``.

``Closed`` answers have exactly their fields (``additionalProperties: false``); ``Open``
ones (the tree, health, GraphQL) may grow fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.responses import Response

from meterd.billing import AdjustmentKind
from meterd.model import Quantity, Window, canonical_quantity


def json_answer(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``value`` (a model, or JSON values) as a JSON answer."""
    return Response(msgspec.json.encode(value), status, headers, "application/json")


Decimal = Annotated[str, Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="An exact decimal.")]
Time = Annotated[int, Meta(description="Unix ms.")]
Count = Annotated[int, Meta(ge=0)]
Dimensions = dict[str, str]


class Closed(Struct, forbid_unknown_fields=True):
    pass


class Open(Struct):
    pass


# ---- errors and health ------------------------------------------------------------------------


class ErrorDetail(Open):
    code: str
    message: str
    parameter: Annotated[str, Meta(description="The parameter or field at fault (400).")] | (
        UnsetType
    ) = UNSET
    problems: (
        Annotated[
            list[str], Meta(description="Every problem of the body, each naming its field (400).")
        ]
        | UnsetType
    ) = UNSET


class Error(Closed):
    """Every error, with any status."""

    error: ErrorDetail


class Health(Open):
    status: Literal["ok", "unavailable"]
    problems: list[str] | UnsetType = UNSET


# ---- the tree and actors ----------------------------------------------------------------------


class RestartRecord(Open):
    at: Time | None
    kind: Annotated[str, Meta(description="normal, shutdown, killed, crash, sibling or operator")]
    error_type: str | None
    message: str


class TreeNode(Open, kw_only=True):
    """A node of the live supervision tree (``supervisors.snapshot``)."""

    name: str
    kind: Literal["supervisor", "worker"]
    strategy: (
        Annotated[
            Literal["one_for_one", "one_for_all", "rest_for_one"],
            Meta(description="Supervisors only."),
        ]
        | UnsetType
    ) = UNSET
    status: Literal["running", "restarting", "stopped", "hibernated"]
    restarts: Count
    started_at: Time | None
    mailbox: Annotated[Count, Meta(description="Workers only.")] | UnsetType = UNSET
    pid: (
        Annotated[int, Meta(description="A running OS-process child only: its process id.")]
        | UnsetType
    ) = UNSET
    restart_history: list[RestartRecord] | UnsetType = UNSET
    children: list[TreeNode]
    children_total: Count


class ActorAction(Closed):
    actor: Annotated[str, Meta(description="The node's path from the root.")]
    action: Literal["restart", "kill"]
    status: Literal["running", "restarting", "stopped"]


# ---- usage, events, quarantine -----------------------------------------------------------------


class UsageRow(Closed):
    start: Time
    end: Time
    value: Decimal
    group: Dimensions | UnsetType = UNSET


class Usage(Closed):
    """Rows for the windows that had usage, in time order."""

    account: str
    meter: str
    window: Window
    from_: Annotated[Time, Meta(description="Aligned down to the window.")] = msgspec.field(
        name="from"
    )
    to: Annotated[Time, Meta(description="Aligned down to the window.")]
    rows: list[UsageRow]


#: ``(start, end, value, group)`` of one usage row; ``group`` is None without group_by.
UsageTuple = tuple[int, int, Quantity, dict[str, str] | None]


def usage_answer(
    account: str, meter: str, window: Window, from_ms: int, to_ms: int, rows: Iterable[UsageTuple]
) -> Usage:
    """The usage answer: ``from``/``to`` aligned down to the window, values exact strings."""
    return Usage(
        account=account,
        meter=meter,
        window=window,
        from_=window.align(from_ms),
        to=window.align(to_ms),
        rows=[
            UsageRow(
                start=start,
                end=end,
                value=canonical_quantity(value),
                group=UNSET if group is None else group,
            )
            for start, end, value, group in rows
        ],
    )


class Event(Closed):
    id: str
    account: str
    meter: str
    quantity: Decimal
    time: Time
    properties: Dimensions
    producer: str
    received_at: Time
    status: (
        Annotated[
            Literal["quarantined", "discarded"],
            Meta(
                description="Only for an event that does not count: quarantined (it crashed"
                " its actor) or discarded by an operator."
            ),
        ]
        | UnsetType
    ) = UNSET


class Events(Closed):
    """One page of events, in journal order."""

    events: list[Event]
    next_cursor: str | None


class AccountEntry(Closed):
    account: str
    awake: Annotated[bool, Meta(description="Its meter actor is running (else hibernated).")]
    updated_at: Annotated[
        Time, Meta(description="When the store last wrote its row: first seen or last checkpoint.")
    ]


class AccountList(Closed):
    """One page of accounts, by id."""

    accounts: list[AccountEntry]
    next_after: Annotated[
        str | None, Meta(description="after for the next page; null when nothing more matched.")
    ]


class MeterUsage(Closed):
    meter: str
    aggregation: str
    unit: Annotated[str, Meta(description="The meter's unit (config), else its name.")]
    rows: list[UsageRow]
    total: Annotated[
        Decimal | None,
        Meta(
            description="The whole range merged by the meter's aggregation (a sum, a max, the"
            " distinct count of the range, ...); null without usage."
        ),
    ]


class UsageSummary(Closed):
    """Every meter's usage of one account per window, each with its total."""

    account: str
    window: Literal["minute", "hour", "day", "month"]
    from_: Annotated[Time, Meta(description="Aligned down to the window.")] = msgspec.field(
        name="from"
    )
    to: Annotated[Time, Meta(description="The end of the window holding to - 1 (or from).")]
    meters: list[MeterUsage]


class QuarantinedEvent(Closed):
    account: str
    batch_id: int
    event_id: str
    error: str
    at: Time


class Quarantine(Closed):
    events: list[QuarantinedEvent]


class SettledEvent(Closed):
    event_id: str
    batch_id: Annotated[int, Meta(description="The journal batch it was quarantined in.")]
    error: Annotated[str, Meta(description="Why it crashed its actor (as quarantined).")]
    quarantined_at: Time


class UnchangedEvent(Closed):
    event_id: str
    action: Annotated[
        Literal["released", "discarded"], Meta(description="What was done to it before.")
    ]
    by: str
    at: Time
    release_batch: Annotated[
        int | None, Meta(description="The journal batch holding its counted copy (released).")
    ]


class QuarantineDecision(Closed):
    """What a release or discard did: the events taken out of quarantine, and the ids asked
    for that were already so (nothing done to them)."""

    account: str
    action: Literal["released", "discarded"]
    batch_id: Annotated[
        int | None,
        Meta(description="The journal batch the released events were appended as; null when"
             " nothing was released (and for a discard)."),
    ]  # fmt: skip
    events: list[SettledEvent]
    unchanged: list[UnchangedEvent]
    by: str
    reason: str


# ---- billing (docs/billing.md) -------------------------------------------------------------


class InvoiceLine(Closed):
    number: Annotated[int, Meta(ge=1)]
    meter: str
    dimensions: Dimensions
    start: Time
    end: Time
    usage: Decimal
    adjusted: Decimal
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    rule: str
    capped: bool
    adjustments: list[int]


class Unpriced(Closed):
    meter: str
    dimensions: Dimensions
    start: Time
    end: Time
    usage: Decimal


class LineChange(Closed):
    meter: str
    start: Time
    old: InvoiceLine | None
    new: InvoiceLine | None
    difference: Decimal
    why: list[str]


class Restatement(Closed):
    id: int
    account: str
    period: str
    at: Time
    causes: list[str]
    old_total: Decimal
    new_total: Decimal
    difference: Decimal
    changes: list[LineChange]


class Closing(Closed):
    by: str
    at: Time
    total: Decimal


class Invoice(Closed):
    account: str
    period: str
    currency: str
    status: Literal["open", "closed"]
    lines: list[InvoiceLine]
    unpriced: list[Unpriced]
    total: Decimal
    closed: Closing | UnsetType = UNSET
    restatements: list[Restatement] | UnsetType = UNSET


class Restatements(Closed):
    restatements: list[Restatement]


class Adjustment(Closed):
    id: int
    account: str
    meter: str
    start: Time
    end: Time
    dimensions: Dimensions
    kind: AdjustmentKind
    quantity: Decimal
    by: str
    at: Time
    reason: str
    idempotency_key: str | None


class Void(Closed):
    id: int
    account: str
    event_id: str
    meter: str
    time: Time
    dimensions: Dimensions
    quantity: Decimal
    by: str
    at: Time
    reason: str
    idempotency_key: str | None


class AdjustmentRecorded(Closed):
    adjustment: Adjustment
    restatement: Restatement | None
    replayed: bool  # true: the one recorded before under the request's Idempotency-Key


class VoidRecorded(Closed):
    void: Void
    restatement: Restatement | None
    replayed: bool


class Adjustments(Closed):
    adjustments: list[Adjustment]


class Voids(Closed):
    voids: list[Void]


class Closure(Closed):
    period: str
    by: str
    at: Time
    accounts: Count


class WindowFigure(Closed):
    start: Time
    end: Time
    value: Decimal


class ExplainedEvent(Closed):
    id: str
    meter: str
    time: Time
    quantity: Decimal
    properties: Dimensions
    producer: str
    received_at: Time
    window: Time
    status: Literal["counted", "voided", "quarantined", "discarded"]
    void: int | None


class AuditEntry(Closed):
    kind: Literal["duplicate", "rejected"]
    id: Annotated[str, Meta(description="Null when it was invalid.")] | None
    code: (
        Annotated[
            str, Meta(description="The rejection code (protocol.md 2.3); null for a duplicate.")
        ]
        | None
    )
    message: str | None
    meter: str | None
    time: (
        Annotated[int, Meta(description="The event's time, Unix ms; null when it was invalid.")]
        | None
    )
    properties: Annotated[Dimensions, Meta(description="Null when they were invalid.")] | None
    producer: str | None
    seq: Annotated[int, Meta(description="The producer's batch seq.")] | None
    batch_id: (
        Annotated[
            int,
            Meta(
                description="The journal batch holding the counted copy of the id"
                " (a duplicate, an id_conflict)."
            ),
        ]
        | None
    )
    received_at: Time
    window: (
        Annotated[
            int,
            Meta(
                description="Start of the window its time falls in; null when the time was"
                " invalid (it is then placed by received_at)."
            ),
        ]
        | None
    )


class CapDetail(Closed):
    """A line's cap as arithmetic: daily x days (a daily_cap) or a monthly cap."""

    cap: Decimal
    daily: Decimal | None
    days: int
    capped: bool
    used_before: Annotated[
        Decimal | None,
        Meta(description="When capped: what earlier segments of the line used of the cap."),
    ]


class Explanation(Closed):
    """A figure down to its windows and (paged) events."""

    account: str
    meter: str
    start: Time
    end: Time
    filter: Dimensions
    value: Decimal
    line: InvoiceLine | None
    windows: list[WindowFigure]
    events: list[ExplainedEvent]
    next_cursor: str | None
    adjustments: list[Adjustment]
    voids: list[Void]
    audit: Annotated[
        list[AuditEntry],
        Meta(
            description="One page of the duplicates and rejected events of the account in"
            " the range that pass the filter."
        ),
    ]
    audit_next_cursor: str | None
    notes: list[str]
    unit: Annotated[str, Meta(description="The meter's unit (config), else its name.")]
    aggregation: str
    cap: Annotated[
        CapDetail | None, Meta(description="The line's cap, when its price rule has one.")
    ]
    decided_by: Annotated[
        ExplainedEvent | None,
        Meta(
            description="For a max, min or latest meter: the counted event that set the"
            " figure (the earliest at the peak; the latest by time, then id)."
        ),
    ]
    currency: Annotated[str, Meta(description="The ISO 4217 code of the line's amount.")]


class GraphQLResponse(Open):
    data: dict[str, Any] | UnsetType | None = UNSET
    errors: list[dict[str, Any]] | UnsetType = UNSET
