"""Billing-support routes (docs/billing.md): invoices, closing, restatements, adjustments,
voids and explanations over :class:`meterd.billing.Billing`, and GraphQL beside them.

Like every ``/v1`` route: the admin token first, then the parameters (400 naming the first
wrong one), then what they name must exist (404), then the answer. Bodies of ``POST``
routes are JSON objects; an unknown or mistyped field is a 400 naming it. Billing's own
errors keep their codes (``already_void``, ``already_closed``, ``period_not_over``,
``unknown_line``, ...). Decimals are strings, times integer Unix milliseconds.

Answers that grow with an account (invoices, restatements, explanations, usage rows, GraphQL
results) are built and encoded on a worker thread (:func:`json_off_loop`): the JSON of an
invoice of 50,000 lines is ~0.5 s of CPU that must not hold the Trio thread. Built and
encoded in slices (:func:`meterd.billing.encode_json`, documents made with ``lazy=True``):
one ``json.dumps`` of it is a single C call of ~0.3 s during which no other thread, the Trio
thread included, can run Python. The bytes are those ``JSONResponse`` would send.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterd.billing import (
    AdjustmentKind,
    Billing,
    BillingError,
    BillingGraphQL,
    Explanation,
    InvoiceView,
    Period,
    Restatement,
    adjustment_json,
    encode_json,
    void_json,
)
from meterd.model import Meter, Window
from meterd.store import InvalidCursor
from meterd.store.reader import MAX_EVENTS_LIMIT

from .bodies import read_json, usage_body
from .errors import ApiError, bad_parameter
from .params import Query, check_millis, usage_query

if TYPE_CHECKING:
    from .routes import Daemon

T = TypeVar("T")

DEFAULT_PAGE: Final = 100
MAX_TEXT: Final = 1000  # by, reason: audit text, not documents
MAX_LINE: Final = 1_000_000
_LINE: Final = re.compile(r"[0-9]{1,7}")  # ASCII digits only (str.isdigit takes "²")


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


def period_of(request: Request) -> Period:
    text = request.path_params["period"]
    try:
        return Period.parse(text)
    except ValueError as error:
        raise bad_parameter("period", f"is not a month: {error}") from None


async def json_body(
    request: Request, fields: Mapping[str, type], required: frozenset[str]
) -> dict[str, Any]:
    """The request's JSON object (:func:`.bodies.read_json`: size and depth bounded), each
    field of the type ``fields`` gives; 400 otherwise."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    for name, value in body.items():
        kind = fields.get(name)
        if kind is None:
            known = ", ".join(sorted(fields))
            raise bad_parameter(name, f"is not a field of this body (known: {known})")
        if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
            raise bad_parameter(name, f"must be {_KINDS[kind]}, not {json.dumps(value)[:40]}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise bad_parameter(name, f"must be at most {MAX_TEXT} characters")
    for name in sorted(required - body.keys()):
        raise bad_parameter(name, "is required")
    return body


_KINDS: Final = {str: "a string", int: "an integer", dict: "an object", bool: "a boolean"}


# ---- invoices -----------------------------------------------------------------------------


async def invoice(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    period = period_of(request)
    await daemon.known_account(account)
    return await json_off_loop(
        daemon, await billing_call(billing_of(daemon).invoice(account, period)), _lazy
    )


async def restatements(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    period = period_of(request)
    await daemon.known_account(account)
    return await json_off_loop(
        daemon,
        await billing_call(billing_of(daemon).restatements(account, period)),
        lambda found: {"restatements": [r.to_json(lazy=True) for r in found]},
    )


def _lazy(answer: InvoiceView | Explanation) -> dict[str, Any]:
    return answer.to_json(lazy=True)


async def line_explanation(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    period = period_of(request)
    query = Query(request.query_params)
    limit = query.integer("limit", low=1, high=MAX_EVENTS_LIMIT, default=DEFAULT_PAGE)
    cursor = query.text("cursor")
    audit_cursor = query.text("audit_cursor")
    line = request.path_params["line"]
    if not _LINE.fullmatch(line) or not 1 <= int(line) <= MAX_LINE:
        raise bad_parameter("line", f"must be a line number from 1 to {MAX_LINE}, not {line!r:.40}")
    await daemon.known_account(account)
    found = billing_of(daemon).explain(
        account, period, int(line), cursor=cursor, limit=limit, audit_cursor=audit_cursor
    )
    return await json_off_loop(daemon, await billing_call(found), _lazy)


async def usage_explanation(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    query = Query(request.query_params)
    meter = query.required("meter")
    start = query.millis("start")
    window = query.choice("window", Window, Window.HOUR)
    group_by = query.text("group_by")
    group = query.text("group")
    if (group_by is None) != (group is None):
        raise bad_parameter("group", "and group_by go together (group_by=size&group=std)")
    limit = query.integer("limit", low=1, high=MAX_EVENTS_LIMIT, default=DEFAULT_PAGE)
    cursor = query.text("cursor")
    audit_cursor = query.text("audit_cursor")
    billing = billing_of(daemon)
    meter_of(billing, meter)
    await daemon.known_account(account)
    found = billing.explain_usage(
        account,
        meter,
        start,
        window,
        None if group_by is None or group is None else {group_by: group},
        cursor=cursor,
        limit=limit,
        audit_cursor=audit_cursor,
    )
    return await json_off_loop(daemon, await billing_call(found), _lazy)


async def close_period(daemon: Daemon, request: Request) -> Response:
    period = period_of(request)
    body = await json_body(request, {"by": str}, frozenset({"by"}))
    closure = await billing_call(billing_of(daemon).close_period(period, body["by"]))
    return JSONResponse(
        {
            "period": str(closure.period),
            "by": closure.by,
            "at": closure.at,
            "accounts": closure.accounts,
        }
    )


# ---- corrections ----------------------------------------------------------------------------

_ADJUSTMENT_FIELDS: Final = {
    "meter": str,
    "start": int,
    "window": str,
    "dimensions": dict,
    "kind": str,
    "quantity": str,
    "by": str,
    "reason": str,
}


async def adjust(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    body = await json_body(
        request,
        _ADJUSTMENT_FIELDS,
        frozenset({"meter", "start", "kind", "quantity", "by", "reason"}),
    )
    try:
        window = Window(body.get("window", "day"))
    except ValueError:
        raise bad_parameter("window", "must be one of minute, hour, day") from None
    try:
        kind = AdjustmentKind(body["kind"])
    except ValueError:
        raise bad_parameter("kind", "must be credit or debit") from None
    start = check_millis("start", body["start"])
    try:  # a correction is dated by its month (a closed one is restated)
        Period.containing(start)
    except ValueError as error:
        raise bad_parameter(
            "start", f"must fall in a billable month, 1970-01 to 9998-12 ({error})"
        ) from None
    dimensions = body.get("dimensions", {})
    for name, value in dimensions.items():
        if not isinstance(value, str):
            raise bad_parameter("dimensions", f"value of {name!r} must be a string")
    billing = billing_of(daemon)
    meter_of(billing, body["meter"])
    await daemon.known_account(account)
    adjustment, restatement = await billing_call(
        billing.adjust(
            account,
            body["meter"],
            start,
            window,
            dimensions,
            kind,
            body["quantity"],
            body["by"],
            body["reason"],
        )
    )
    names = billing.meter(adjustment.meter).dimensions
    answer = _recorded(daemon, "adjustment", adjustment_json(adjustment, names), restatement)
    del restatement  # the worker takes it over (its lines are the month's)
    return await answer


async def void(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    event_id = request.path_params["event"]
    body = await json_body(
        request, {"by": str, "reason": str, "period": str}, frozenset({"by", "reason"})
    )
    period = None
    if "period" in body:
        try:
            period = Period.parse(body["period"])
        except ValueError as error:
            raise bad_parameter("period", f"is not a month: {error}") from None
    await daemon.known_account(account)
    billing = billing_of(daemon)
    found, restatement = await billing_call(
        billing.void_event(account, event_id, body["by"], body["reason"], period)
    )
    names = billing.meter(found.meter).dimensions
    answer = _recorded(daemon, "void", void_json(found, names), restatement)
    del restatement  # the worker takes it over (its lines are the month's)
    return await answer


async def _recorded(
    daemon: Daemon, kind: str, record: dict[str, Any], restatement: Restatement | None
) -> Response:
    """201 for a correction just recorded, with the restatement it caused (closed month)."""

    def body(found: Restatement | None) -> dict[str, Any]:
        return {kind: record, "restatement": None if found is None else found.to_json(lazy=True)}

    answer = json_off_loop(daemon, restatement, body, 201)
    del restatement
    return await answer


async def adjustments(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    query = Query(request.query_params)
    meter = query.text("meter")
    from_ms, to_ms = query.span()
    billing = billing_of(daemon)
    if meter is not None:
        meter_of(billing, meter)
    found = await billing.db.adjustments(account, from_ms, to_ms, meter)
    return JSONResponse(
        {
            "adjustments": [
                adjustment_json(a, billing.meter(a.meter).dimensions)
                for a in found
                if a.meter in billing.meters
            ]
        }
    )


async def voids(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    billing = billing_of(daemon)
    found = await billing.db.voids(account)
    return JSONResponse(
        {
            "voids": [
                void_json(v, billing.meter(v.meter).dimensions)
                for v in found
                if v.meter in billing.meters
            ]
        }
    )


# ---- GraphQL --------------------------------------------------------------------------------


async def graphql(daemon: Daemon, request: Request) -> Response:
    body = await read_json(request)
    if daemon.graphql is None:  # one per daemon: it bounds the queries in progress
        daemon.graphql = BillingGraphQL(billing_of(daemon))
    status, result = await daemon.graphql.execute(body)
    headers = {"Retry-After": "1"} if status == 429 else None
    answer = json_off_loop(daemon, result, _itself, status, headers)
    del result  # the worker takes the result over (and frees it)
    return await answer


async def billed_usage(daemon: Daemon, request: Request) -> Response:
    """Usage rows as billing sees them: like ``/usage``, with voids and adjustments."""
    account = request.path_params["account"]
    meter_name, from_ms, to_ms, window, group_by = usage_query(request.query_params)
    billing = billing_of(daemon)
    meter = meter_of(billing, meter_name)
    await daemon.known_account(account)
    rows = billing.usage(account, meter.name, from_ms, to_ms, window, group_by)
    return await json_off_loop(
        daemon,
        await billing_call(rows),
        lambda found: usage_body(account, meter.name, window, from_ms, to_ms, found),
    )


def _itself(document: dict[str, Any]) -> dict[str, Any]:
    return document
