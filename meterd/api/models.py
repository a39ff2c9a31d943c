"""What the API's requests carry, declared once as msgspec models.

Each route's path parameters, query parameters and JSON body is one :class:`msgspec.Struct`
here. The same declaration is checked on every request (:mod:`.operations` hands it to
msgspec) and written into ``/openapi.json`` (:mod:`.openapi`), bounds included: a field's
``Meta`` is both its rule and its documentation. ``Meta(extra={"why": ...})`` is the
sentence a 400 says when the field breaks its rule (``{value}`` is what was sent).

A rule between fields that the schema cannot say is a ``__post_init__`` check raising the
400 itself, listed in the model's ``rules`` (the document's description of the operation
repeats them, and the schemathesis test knows such operations may rightly refuse
schema-valid requests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from meterd.billing import KEY_MAX, KEY_PATTERN, AdjustmentKind, Period
from meterd.isotime import ISO_PATTERN, parse_iso
from meterd.model import MAX_MS, MAX_MS_TEXT, Event, Window
from meterd.store.reader import MAX_EVENTS_LIMIT

from .errors import bad_parameter

DEFAULT_TREE_LIMIT: Final = 100
MAX_TREE_LIMIT: Final = 10_000
MAX_NODES_LIMIT: Final = MAX_EVENTS_LIMIT  # 10,000: the bound every paged route has
DEFAULT_PAGE: Final = 100
MAX_TEXT: Final = 1000  # by, reason: audit text, not documents
MAX_LINE: Final = 1_000_000

_YEAR: Final = "(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
PERIOD_PATTERN: Final = f"^{_YEAR}-(0[1-9]|1[0-2])$"
"""What :meth:`meterd.billing.Period.parse` takes: ``YYYY-MM``, months 01-12, years 1970
to 9998 (tested against it)."""
CURSOR_PATTERN: Final = r"^[0-9]{1,18}\.[0-9]{1,9}$"
"""An events cursor as the store writes it (``<batch>.<index>``, :func:`decode_cursor`)."""
AUDIT_CURSOR_PATTERN: Final = r"^-?[0-9]{1,18}\.[0-9]{1,9}$"
LAST_BILLABLE_MS: Final = Period(9998, 12).end_ms - 1
DECIMAL_PATTERN: Final = r"^[0-9]{1,30}(\.[0-9]{1,30})?$"
NOT_BLANK_PATTERN: Final = (
    r"[^\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
"""Holds a character that is not blank (``str.isspace``, as billing's check): spelled out,
since ``\\S`` differs between Python and JSON Schema's regular expressions (``\\x1c``)."""

# ---- field types ---------------------------------------------------------------------------

Millis = Annotated[
    int,
    Meta(
        ge=0,
        le=MAX_MS,
        extra={
            "why": f"must be Unix milliseconds between 0 and {MAX_MS} ({MAX_MS_TEXT}),"
            " not {value}"
        },
    ),
]
Text = Annotated[str, Meta(min_length=1)]
Name = Annotated[str, Meta(min_length=1, pattern="^[^/]+$")]
Account = Annotated[Name, Meta(description="The account id.")]
Month = Annotated[
    str,
    Meta(
        pattern=PERIOD_PATTERN,
        description="A calendar month, UTC, written YYYY-MM (2026-11), 1970-01 to 9998-12.",
        extra={"why": "is not a month written YYYY-MM (months 01-12, years 1970 to 9998)"},
    ),
]
AuditText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TEXT,
        pattern=NOT_BLANK_PATTERN,
        extra={"why": f"must be 1 to {MAX_TEXT} characters, not all blank"},
    ),
]
Cursor = Annotated[
    str,
    Meta(
        pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page.",
        extra={"why": "is not a cursor this server issued (next_cursor of a page)"},
    ),
]
AuditCursor = Annotated[
    str,
    Meta(
        pattern=AUDIT_CURSOR_PATTERN,
        description="audit_next_cursor of the previous page (of the audit entries).",
        extra={"why": "is not a cursor this server issued (audit_next_cursor of a page)"},
    ),
]
Granularity = Annotated[Window, Meta(description="Granularity.")]


def month(name: str, text: str) -> Period:
    """The :class:`Period` ``text`` names (``PERIOD_PATTERN`` already held), else a 400."""
    try:
        return Period.parse(text)
    except ValueError as error:
        raise bad_parameter(name, f"is not a month: {error}") from None


class Model(Struct, forbid_unknown_fields=True):
    """A request part: unknown names are refused."""

    rules: ClassVar[tuple[str, ...]] = ()
    """Rules between fields the schema cannot say (checked in ``__post_init__``)."""


def _span(from_ms: int, to_ms: int) -> None:
    if from_ms > to_ms:
        raise bad_parameter("from", f"must not be after 'to' ({from_ms} > {to_ms})")


_FROM_NOT_AFTER_TO: Final = "from must not be after to"

# ---- path parameters -----------------------------------------------------------------------


class NoParameters(Model):
    pass


class AccountPath(Model):
    account: Account


class CorrectionHeaders(Model):
    """Request headers of a correction (docs/billing.md "Retrying a correction")."""

    idempotency_key: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=KEY_MAX,
                pattern=KEY_PATTERN,
                description="Your key for this correction (1-200 printable ASCII characters,"
                " no space at either end; a UUID will do). Retrying with the same key and"
                " the same body answers the correction already recorded (200, replayed) and"
                " records nothing; with another body it is 409 idempotency_conflict. Without"
                " it the server makes one: a retry then records the correction again.",
                extra={
                    "why": "must be 1 to 200 printable ASCII characters without a space at"
                    " either end, not {value}"
                },
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="Idempotency-Key")


class EventPath(Model):
    account: Account
    event: Annotated[Name, Meta(description="The event id.")]


class ActorPath(Model):
    actor: Annotated[
        Text,
        Meta(
            description="An account id (its meter actor) or a node path from the root joined"
            " by '/', e.g. root/accounts/sweeper."
        ),
    ]


class PeriodPath(Model):
    period: Month


class InvoicePath(Model):
    account: Account
    period: Month


class LinePath(Model):
    account: Account
    period: Month
    line: Annotated[int, Meta(ge=1, le=MAX_LINE, description="The line number, from 1.")]


# ---- query parameters ----------------------------------------------------------------------


class TreeQuery(Model):
    limit: Annotated[
        int, Meta(ge=0, le=MAX_TREE_LIMIT, description="At most this many children per node.")
    ] = DEFAULT_TREE_LIMIT


class NodesQuery(Model):
    """The console's table of the tree (``/v1/tree/nodes``)."""

    search: (
        Annotated[str, Meta(min_length=1, max_length=200, description="Part of a node's name.")]
        | None
    ) = None
    status: (
        Annotated[
            Literal["running", "restarting", "stopped", "hibernated", "quarantined"],
            Meta(
                description="Only nodes with this status (quarantined: accounts with events"
                " in quarantine)."
            ),
        ]
        | None
    ) = None
    sort: Annotated[
        Literal["tree", "name", "mailbox", "restarts", "memory", "rate"],
        Meta(description="tree: depth first, the tree's own order."),
    ] = "tree"
    order: Literal["asc", "desc"] = "asc"
    offset: Annotated[int, Meta(ge=0, le=100_000_000)] = 0
    limit: Annotated[int, Meta(ge=1, le=MAX_NODES_LIMIT, description="Rows per page.")] = 50


class UsageQuery(Model):
    rules = (_FROM_NOT_AFTER_TO, "group_by must be a dimension of the meter")

    meter: Annotated[Text, Meta(description="The meter.")]
    from_: Annotated[Millis, Meta(description="Inclusive, Unix ms (aligned down).")] = (
        msgspec.field(name="from")
    )
    to: Annotated[Millis, Meta(description="Exclusive, Unix ms (aligned down); >= from.")]
    window: Granularity = Window.HOUR
    group_by: Annotated[Text, Meta(description="A dimension of the meter.")] | None = None

    def __post_init__(self) -> None:
        _span(self.from_, self.to)


class EventsQuery(Model):
    rules = (_FROM_NOT_AFTER_TO,)

    meter: Annotated[Text, Meta(description="Only this meter's events.")] | None = None
    from_: Annotated[Millis, Meta(description="Event time, inclusive.")] = msgspec.field(
        default=0, name="from"
    )
    to: Annotated[Millis, Meta(description="Event time, exclusive.")] = MAX_MS
    limit: Annotated[int, Meta(ge=1, le=MAX_EVENTS_LIMIT, description="Page size.")] = DEFAULT_PAGE
    cursor: Cursor | None = None
    order: Annotated[
        Literal["asc", "desc"],
        Meta(
            description="asc: in ingestion order; desc: the last ingested first (a cursor"
            " goes on in the order it was issued for)."
        ),
    ] = "asc"
    id: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=200,
                description="Only the event with this id (what a producer sent as `id`).",
            ),
        ]
        | None
    ) = None
    property: (
        Annotated[
            str,
            Meta(
                pattern="^[^=]+=",
                max_length=64 + 1 + 256,
                description="NAME=VALUE: only events whose property NAME has exactly this value.",
                examples=["app=web-1"],
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        _span(self.from_, self.to)

    def where(self) -> Callable[[Event], bool] | None:
        """The ``id`` and ``property`` filters as one test of an event (None: no filter)."""
        if self.id is None and self.property is None:
            return None
        wanted_id = self.id
        name, _, value = (self.property or "").partition("=")

        def match(event: Event) -> bool:
            if wanted_id is not None and event.id != wanted_id:
                return False
            return not name or (name, value) in event.properties

        return match


MAX_SEARCH: Final = 200


class AccountsQuery(Model):
    search: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=MAX_SEARCH,
                description="Only accounts whose id contains this text (ASCII letters match"
                " either case).",
            ),
        ]
        | None
    ) = None
    limit: Annotated[int, Meta(ge=1, le=MAX_EVENTS_LIMIT, description="Accounts per page.")] = (
        DEFAULT_PAGE
    )
    after: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=1000,
                description="List the accounts after this id: next_after of the previous page.",
            ),
        ]
        | None
    ) = None


class SummaryQuery(Model, kw_only=True):
    rules = (_FROM_NOT_AFTER_TO,)

    meter: Annotated[Text, Meta(description="Only this meter (default: every meter).")] | None = (
        None
    )
    from_: Annotated[Millis, Meta(description="Inclusive, Unix ms (aligned down).")] = (
        msgspec.field(name="from")
    )
    to: Annotated[Millis, Meta(description="Exclusive, Unix ms, >= from (up to its window's end).")]
    window: Annotated[
        Literal["minute", "hour", "day", "month"],
        Meta(description="Granularity; month is the calendar month, UTC."),
    ] = "day"

    def __post_init__(self) -> None:
        _span(self.from_, self.to)


class QuarantineQuery(Model):
    account: Annotated[Text, Meta(description="Only this account's.")] | None = None


class PageQuery(Model):
    """One page of an explanation's events and audit entries."""

    limit: Annotated[int, Meta(ge=1, le=MAX_EVENTS_LIMIT, description="Events per page.")] = (
        DEFAULT_PAGE
    )
    cursor: Cursor | None = None
    audit_cursor: AuditCursor | None = None


class UsageExplanationQuery(PageQuery, kw_only=True):
    rules = (
        "group and group_by go together",
        "group_by must be a dimension of the meter",
    )

    meter: Annotated[Text, Meta(description="The meter.")]
    start: Annotated[Millis, Meta(description="The window's start (aligned down).")]
    window: Granularity = Window.HOUR
    group_by: Annotated[Text, Meta(description="A dimension of the meter (with group).")] | None = (
        None
    )
    group: Annotated[Text, Meta(description="That dimension's value (with group_by).")] | None = (
        None
    )

    def __post_init__(self) -> None:
        if (self.group_by is None) != (self.group is None):
            raise bad_parameter("group", "and group_by go together (group_by=size&group=std)")


class AdjustmentsQuery(Model):
    rules = (_FROM_NOT_AFTER_TO,)

    meter: Annotated[Text, Meta(description="Only this meter's.")] | None = None
    from_: Annotated[Millis, Meta(description="Inclusive.")] = msgspec.field(default=0, name="from")
    to: Annotated[Millis, Meta(description="Exclusive.")] = MAX_MS

    def __post_init__(self) -> None:
        _span(self.from_, self.to)


# ---- JSON bodies -------------------------------------------------------------------------


class CloseBody(Model):
    """Who closes the month."""

    by: AuditText


MONTH_OR_DATE_PATTERN: Final = f"({PERIOD_PATTERN})|({ISO_PATTERN})"
"""A month (``2026-11``) or an ISO-8601 date or time in it (``2026-11-20``)."""


class VoidBody(Model):
    """Who voids the event and why."""

    rules = ("period as an ISO-8601 date must be a real date in 1970-01 to 9998-12",)

    by: AuditText
    reason: AuditText
    period: (
        Annotated[
            str,
            Meta(
                pattern=MONTH_OR_DATE_PATTERN,
                description="Search the event in this month only: 2026-11, or a date or time"
                " in it (2026-11-20, ISO-8601; no zone: UTC).",
                extra={
                    "why": "is not a month written YYYY-MM (months 01-12, years 1970 to 9998)"
                    " nor an ISO-8601 date like 2026-11-20"
                },
            ),
        ]
        | UnsetType
    ) = UNSET

    def month(self) -> Period | None:
        """The month to search (None: every month); a 400 naming ``period`` if there is none."""
        if isinstance(self.period, UnsetType):
            return None
        if re.fullmatch(PERIOD_PATTERN, self.period):
            return month("period", self.period)
        try:
            return Period.containing(parse_iso(self.period))
        except ValueError as error:
            raise bad_parameter("period", f"is not a month nor a date in one: {error}") from None


_START_WHY: Final = (
    "must be Unix ms or an ISO-8601 date or time (2026-11-20, 2026-11-20T13:00:00Z) in a"
    f" billable month, 1970-01 to 9998-12 (0 to {LAST_BILLABLE_MS} ms), not {{value}}"
)


class AdjustmentBody(Model, kw_only=True):
    """A credit or debit of a quantity on a window of a summed meter."""

    rules = (
        "start as ISO-8601 must be a real date and time",
        "meter must be a sum or count meter",
        "start must be aligned to the window",
        "dimensions must be dimensions of the meter",
        "quantity must be greater than 0",
    )

    meter: Text
    start: Annotated[
        Annotated[int, Meta(ge=0, le=LAST_BILLABLE_MS)]
        | Annotated[
            str,
            Meta(
                pattern=ISO_PATTERN,
                description="ISO-8601, e.g. 2026-11-20 or 2026-11-20T13:00:00Z (no zone: UTC).",
            ),
        ],
        Meta(
            description="The window's start: Unix ms, or an ISO-8601 date or time (no zone:"
            " UTC); aligned to window, in a billable month (1970-01 to 9998-12).",
            extra={"why": _START_WHY},
        ),
    ]
    window: Window = Window.DAY
    dimensions: dict[str, str] = {}
    kind: AdjustmentKind
    quantity: Annotated[
        str,
        Meta(
            pattern=DECIMAL_PATTERN,
            description="A decimal > 0, digits only (at most 30 each side of the point).",
            extra={"why": "must be a decimal like '12.5' (digits, optional point), not {value}"},
        ),
    ]
    by: AuditText
    reason: AuditText

    def __post_init__(self) -> None:
        if isinstance(self.start, str):  # ISO-8601: the pattern held, the calendar may not
            try:
                ms = parse_iso(self.start)
            except ValueError as error:
                raise bad_parameter("start", str(error)) from None
            if not 0 <= ms <= LAST_BILLABLE_MS:
                raise bad_parameter("start", _START_WHY.format(value=repr(self.start)))
            self.start = ms

    @property
    def start_ms(self) -> int:
        """``start`` in Unix ms (an ISO-8601 ``start`` was converted when read)."""
        assert isinstance(self.start, int)
        return self.start


MAX_QUARANTINE_IDS: Final = 1000

EventIds = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=MAX_TEXT)]],
    Meta(
        min_length=1,
        max_length=MAX_QUARANTINE_IDS,
        description=f"Event ids (1 to {MAX_QUARANTINE_IDS}), as GET /v1/quarantine lists them.",
        extra={"why": f"must be a list of 1 to {MAX_QUARANTINE_IDS} non-empty event ids"},
    ),
]


class ReleaseBody(Model):
    """Which quarantined events of the account to re-apply (all without ``ids``), who and
    why (kept in the quarantine log)."""

    by: AuditText
    reason: AuditText
    ids: EventIds | UnsetType = UNSET


class DiscardBody(Model):
    """Which quarantined events of the account to set aside for good, who and why (kept in
    the quarantine log)."""

    ids: EventIds
    by: AuditText
    reason: AuditText


class GraphQLRequest(Struct):
    """A GraphQL request (checked by the GraphQL executor, which answers in its own shape)."""

    query: str
    variables: dict[str, Any] | None = None
    operationName: str | None = None
