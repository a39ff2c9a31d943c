"""Billing-support routes (docs/billing.md): invoices, closing, restatements, adjustments,
voids and explanations over :class:`meterd.billing.Billing`, and GraphQL beside them.

Like every ``/v1`` route: the admin token first, then the parameters and the body (models
of :mod:`.models`: 400 naming the first wrong one), then what they name must exist (404),
then the answer. Billing's own errors keep their codes (``already_void``,
``already_closed``, ``period_not_over``, ``unknown_line``, ...). Decimals are strings, times
integer Unix milliseconds.

Answers that grow with an account (invoices, restatements, explanations, usage rows, GraphQL
results) are built and encoded on a worker thread (:func:`json_off_loop`): the JSON of an
invoice of 50,000 lines is ~0.5 s of CPU that must not hold the Trio thread. Built and
encoded in slices (:func:`meterd.billing.encode_json`, documents made with ``lazy=True``):
one ``json.dumps`` of it is a single C call of ~0.3 s during which no other thread, the Trio
thread included, can run Python. The bytes are those ``JSONResponse`` would send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Final, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterd.billing import (
    Adjustment,
    Billing,
    BillingError,
    BillingGraphQL,
    Explanation,
    InvoiceView,
    Restatement,
    Void,
    adjustment_json,
    encode_json,
    void_json,
)
from meterd.model import Meter
from meterd.store import InvalidCursor

from . import answers
from .answers import json_answer, usage_answer
from .bodies import read_json
from .daemon import Daemon
from .errors import ApiError, bad_parameter
from .models import (
    AccountPath,
    AdjustmentBody,
    AdjustmentsQuery,
    CloseBody,
    CorrectionHeaders,
    EventPath,
    GraphQLRequest,
    InvoicePath,
    LinePath,
    PageQuery,
    PeriodPath,
    UsageExplanationQuery,
    UsageQuery,
    VoidBody,
    month,
)
from .operations import ACCOUNT, GRAPHQL, Operations, every_shard

T = TypeVar("T")

ops = Operations()

_READ: Final = (400, 401, 404, 500, 503)
_WRITE: Final = (400, 401, 409, 413, 500, 503)
REPLAYED_HEADER: Final = "Idempotent-Replayed"
_REPLAYED: Final = (
    "Replayed: the correction recorded before under this Idempotency-Key for the same"
    " request (header Idempotent-Replayed: true, replayed: true); nothing was recorded."
)


def billing_of(daemon: Daemon) -> Billing:
    if daemon.billing is None:
        raise ApiError(500, "internal", "billing is not attached to this API")
    return daemon.billing


@contextmanager
def billing_errors() -> Iterator[None]:
    """Answer billing's errors (and a bad events cursor) in the API's error shape."""
    try:
        yield
    except BillingError as error:
        raise ApiError(error.status, error.code, str(error), parameter=error.parameter) from None
    except InvalidCursor as error:
        raise bad_parameter("cursor", f"is not valid: {error}") from None


async def json_off_loop(
    daemon: Daemon,
    value: T,
    document: Callable[[T], Any],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON answer of ``document(value)``, built and encoded on one of billing's worker
    threads (:meth:`Billing.off_loop`) as Starlette's ``JSONResponse`` would encode it. The
    worker takes ``value`` over: pass it without keeping a reference (``await
    json_off_loop(daemon, await ...)``), so a large answer is freed there too."""
    box = [value]
    del value
    body = await billing_of(daemon).off_loop(partial(_encode, box, document))
    return Response(body, status, headers, media_type="application/json")


def _encode(box: list[T], document: Callable[[T], Any]) -> bytes:
    return encode_json(document(box.pop())).encode("utf-8")


async def billing_call(work: Awaitable[T]) -> T:
    """Await a billing call under :func:`billing_errors`."""
    with billing_errors():
        return await work


def meter_of(billing: Billing, name: str) -> Meter:
    with billing_errors():
        return billing.meter(name)


# ---- invoices -----------------------------------------------------------------------------

_INVOICE: Final = "/v1/accounts/{account}/invoices/{period}"


@ops.get(
    _INVOICE,
    "invoice",
    "An account's invoice for a month: lines and total; closing and restatements when"
    " closed (a changed rating of a closed month is restated first).",
    answers={200: (answers.Invoice, "The invoice.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def invoice(daemon: Daemon, path: InvoicePath) -> Response:
    period = month("period", path.period)
    await daemon.known_account(path.account)
    return await json_off_loop(
        daemon, await billing_call(billing_of(daemon).invoice(path.account, period)), _lazy
    )


@ops.get(
    f"{_INVOICE}/restatements",
    "restatements",
    "The restatements of a closed month, oldest first.",
    answers={200: (answers.Restatements, "Restatements.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def restatements(daemon: Daemon, path: InvoicePath) -> Response:
    period = month("period", path.period)
    await daemon.known_account(path.account)
    return await json_off_loop(
        daemon,
        await billing_call(billing_of(daemon).restatements(path.account, period)),
        lambda found: {"restatements": [r.to_json(lazy=True) for r in found]},
    )


def _lazy(answer: InvoiceView | Explanation) -> dict[str, Any]:
    return answer.to_json(lazy=True)


@ops.get(
    f"{_INVOICE}/lines/{{line}}/explanation",
    "explainLine",
    "An invoice line down to its windows and (paged) events, with the adjustments and voids on it.",
    answers={200: (answers.Explanation, "The explanation, one page.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def line_explanation(daemon: Daemon, path: LinePath, query: PageQuery) -> Response:
    period = month("period", path.period)
    await daemon.known_account(path.account)
    found = billing_of(daemon).explain(
        path.account,
        period,
        path.line,
        cursor=query.cursor,
        limit=query.limit,
        audit_cursor=query.audit_cursor,
    )
    return await json_off_loop(daemon, await billing_call(found), _lazy)


@ops.get(
    "/v1/accounts/{account}/usage/explanation",
    "explainUsage",
    "One usage figure (a window, optionally one group value) down to its events, with voids"
    " applied and adjustments added.",
    answers={200: (answers.Explanation, "The explanation, one page.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def usage_explanation(
    daemon: Daemon, path: AccountPath, query: UsageExplanationQuery
) -> Response:
    billing = billing_of(daemon)
    meter_of(billing, query.meter)
    await daemon.known_account(path.account)
    group_by, group = query.group_by, query.group
    found = billing.explain_usage(
        path.account,
        query.meter,
        query.start,
        query.window,
        None if group_by is None or group is None else {group_by: group},
        cursor=query.cursor,
        limit=query.limit,
        audit_cursor=query.audit_cursor,
    )
    return await json_off_loop(daemon, await billing_call(found), _lazy)


@ops.post(
    "/v1/periods/{period}/close",
    "closePeriod",
    "Close a finished month for every account: its figures become final.",
    answers={200: (answers.Closure, "Closed.")},
    errors=_WRITE,
    scope=every_shard("close"),
)
async def close_period(daemon: Daemon, path: PeriodPath, body: CloseBody) -> Response:
    period = month("period", path.period)
    closure = await billing_call(billing_of(daemon).close_period(period, body.by))
    return json_answer(
        answers.Closure(
            period=str(closure.period), by=closure.by, at=closure.at, accounts=closure.accounts
        )
    )


# ---- corrections ----------------------------------------------------------------------------


@ops.post(
    "/v1/accounts/{account}/adjustments",
    "adjust",
    "Credit or debit a quantity on a summed meter, a window and dimension values"
    " (append-only; a closed month is restated at once).",
    answers={
        201: (answers.AdjustmentRecorded, "Recorded."),
        200: (answers.AdjustmentRecorded, _REPLAYED),
    },
    errors=(*_READ, 409, 413),
    scope=ACCOUNT,
)
async def adjust(
    daemon: Daemon, path: AccountPath, headers: CorrectionHeaders, body: AdjustmentBody
) -> Response:
    billing = billing_of(daemon)
    meter_of(billing, body.meter)
    await daemon.known_account(path.account)
    adjustment, restatement = await billing_call(
        billing.adjust(
            path.account,
            body.meter,
            body.start_ms,
            body.window,
            body.dimensions,
            body.kind,
            body.quantity,
            body.by,
            body.reason,
            headers.idempotency_key,
        )
    )
    answer = _recorded(daemon, adjustment, restatement)
    del restatement  # the worker takes it over (its lines are the month's)
    return await answer


@ops.post(
    "/v1/accounts/{account}/events/{event}/void",
    "voidEvent",
    "Take one event out of billed usage (it stays in the journal; a closed month is restated"
    " at once).",
    answers={201: (answers.VoidRecorded, "Recorded."), 200: (answers.VoidRecorded, _REPLAYED)},
    errors=(400, 401, 404, 409, 413, 500, 503),
    scope=ACCOUNT,
)
async def void(
    daemon: Daemon, path: EventPath, headers: CorrectionHeaders, body: VoidBody
) -> Response:
    period = body.month()
    await daemon.known_account(path.account)
    billing = billing_of(daemon)
    found, restatement = await billing_call(
        billing.void_event(
            path.account, path.event, body.by, body.reason, period, headers.idempotency_key
        )
    )
    answer = _recorded(daemon, found, restatement)
    del restatement  # the worker takes it over (its lines are the month's)
    return await answer


def correction_json(billing: Billing, record: Adjustment | Void) -> dict[str, Any]:
    """``record``'s document, its dimension values named by its meter's dimensions."""
    names = billing.meter(record.meter).dimensions
    if isinstance(record, Adjustment):
        return adjustment_json(record, names)
    return void_json(record, names)


async def _recorded(
    daemon: Daemon, record: Adjustment | Void, restatement: Restatement | None
) -> Response:
    """201 for a correction just recorded, with the restatement it caused (closed month);
    200 with ``Idempotent-Replayed: true`` for the one recorded before under the request's
    idempotency key (nothing recorded this time)."""
    kind = "adjustment" if isinstance(record, Adjustment) else "void"
    document = correction_json(billing_of(daemon), record)
    replayed = record.replayed

    def body(found: Restatement | None) -> dict[str, Any]:
        return {
            kind: document,
            "restatement": None if found is None else found.to_json(lazy=True),
            "replayed": replayed,
        }

    status, headers = (200, {REPLAYED_HEADER: "true"}) if replayed else (201, None)
    answer = json_off_loop(daemon, restatement, body, status, headers)
    del restatement
    return await answer


@ops.get(
    "/v1/accounts/{account}/adjustments",
    "adjustments",
    "Adjustments whose window starts in [from, to), oldest first.",
    answers={200: (answers.Adjustments, "Adjustments.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def adjustments(daemon: Daemon, path: AccountPath, query: AdjustmentsQuery) -> Response:
    billing = billing_of(daemon)
    if query.meter is not None:
        meter_of(billing, query.meter)
    found = await billing.db.adjustments(path.account, query.from_, query.to, query.meter)
    return JSONResponse({"adjustments": _configured(billing, found)})


@ops.get(
    "/v1/accounts/{account}/voids",
    "voids",
    "The account's voided events, oldest void first.",
    answers={200: (answers.Voids, "Voids.")},
    errors=(401, 500),
    scope=ACCOUNT,
)
async def voids(daemon: Daemon, path: AccountPath) -> Response:
    billing = billing_of(daemon)
    found = await billing.db.voids(path.account)
    return JSONResponse({"voids": _configured(billing, found)})


def _configured(billing: Billing, records: Sequence[Adjustment | Void]) -> list[dict[str, Any]]:
    """The documents of ``records`` whose meter is configured (one removed from the config
    has no dimension names to show them by)."""
    return [correction_json(billing, r) for r in records if r.meter in billing.meters]


# ---- GraphQL --------------------------------------------------------------------------------


@ops.post(
    "/v1/graphql",
    "graphql",
    "GraphQL over billing: account -> usage, invoices, lines -> explanation (schema:"
    " meterd.billing.SDL).",
    answers={
        200: (answers.GraphQLResponse, "Executed (field errors in errors)."),
        400: (
            answers.GraphQLResponse,
            "Not executable: parse or validation error, or over a limit (tokens, depth,"
            " cost); extensions.code says which.",
        ),
        429: (
            answers.GraphQLResponse,
            "As many queries as the daemon runs at once are in progress (busy); retry after"
            " Retry-After seconds.",
        ),
    },
    errors=(401, 413, 500),
    rules=("query must be a GraphQL query valid against the schema, within its limits",),
    documented_body=GraphQLRequest,
    scope=GRAPHQL,
)
async def graphql(daemon: Daemon, request: Request) -> Response:
    body = await read_json(request)
    if daemon.graphql is None:  # one per daemon: it bounds the queries in progress
        daemon.graphql = BillingGraphQL(billing_of(daemon))
    status, result = await daemon.graphql.execute(body)
    headers = {"Retry-After": "1"} if status == 429 else None
    answer = json_off_loop(daemon, result, _itself, status, headers)
    del result  # the worker takes the result over (and frees it)
    return await answer


@ops.get(
    "/v1/accounts/{account}/usage/billed",
    "billedUsage",
    "Usage as billed: like /usage, with voided events taken out and adjustments added in the"
    " window they start in.",
    answers={200: (answers.Usage, "Rows for the windows that had usage.")},
    errors=_READ,
    scope=ACCOUNT,
)
async def billed_usage(daemon: Daemon, path: AccountPath, query: UsageQuery) -> Response:
    """Usage rows as billing sees them: like ``/usage``, with voids and adjustments."""
    billing = billing_of(daemon)
    meter = meter_of(billing, query.meter)
    await daemon.known_account(path.account)
    rows = billing.usage(
        path.account, meter.name, query.from_, query.to, query.window, query.group_by
    )
    return await json_off_loop(
        daemon,
        await billing_call(rows),
        lambda found: msgspec.to_builtins(
            usage_answer(path.account, meter.name, query.window, query.from_, query.to, found)
        ),
    )


def _itself(document: dict[str, Any]) -> dict[str, Any]:
    return document
