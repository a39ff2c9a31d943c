"""The OpenAPI 3.1 document of the API, served at ``/openapi.json``.

Written by hand, next to the routes it describes (:mod:`.routes`); the test suite runs
schemathesis against it, so a route, parameter or answer that drifts from it fails.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from meterd import __version__
from meterd.model import MAX_MS, MAX_MS_TEXT
from meterd.store.reader import MAX_EVENTS_LIMIT

from .billing import MAX_LINE

_ERROR_STATUSES: Final = {
    "400": "A parameter is missing or wrong (``error.parameter`` names it), or the body is not"
    " JSON (invalid_body) or nests more than 32 levels (body_too_deep).",
    "401": "The admin token is missing or wrong.",
    "404": "The account, meter, actor, event or invoice line is unknown, or no such route.",
    "405": "The method is not allowed on this route.",
    "409": "The actor cannot be acted on now, or its restart failed to start it again"
    " (start_failed: it is left stopped); or a billing conflict (already void, already"
    " closed, period not over, quarantined event).",
    "413": "The body is larger than 1 MiB (body_too_large).",
    "500": "An unexpected error (the daemon log has the details).",
    "503": "The account's actor could not answer now (unavailable), or the store or the"
    " billing database cannot write (a full disk: nothing was written); retry shortly.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _millis(name: str, description: str, *, required: bool) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_MS},
    }


def _text(name: str, description: str, *, required: bool = False, where: str = "query") -> Any:
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


_ACCOUNT: Final = {
    "name": "account",
    "in": "path",
    "required": True,
    "description": "The account id.",
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}

_SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "parameter": {"type": "string"},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "RestartRecord": {
        "type": "object",
        "required": ["at", "kind", "error_type", "message"],
        "properties": {
            "at": {"type": ["integer", "null"]},
            "kind": {
                "type": "string",
                "description": "normal, shutdown, killed, crash, sibling or operator",
            },
            "error_type": {"type": ["string", "null"]},
            "message": {"type": "string"},
        },
    },
    "TreeNode": {
        "type": "object",
        "required": [
            "name",
            "kind",
            "status",
            "restarts",
            "started_at",
            "children",
            "children_total",
        ],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["supervisor", "worker"]},
            "strategy": {
                "type": "string",
                "enum": ["one_for_one", "one_for_all", "rest_for_one"],
                "description": "Supervisors only.",
            },
            "status": {
                "type": "string",
                "enum": ["running", "restarting", "stopped", "hibernated"],
            },
            "restarts": {"type": "integer", "minimum": 0},
            "started_at": {"type": ["integer", "null"], "description": "Unix ms."},
            "mailbox": {"type": "integer", "minimum": 0, "description": "Workers only."},
            "restart_history": {"type": "array", "items": _ref("RestartRecord")},
            "children": {"type": "array", "items": _ref("TreeNode")},
            "children_total": {"type": "integer", "minimum": 0},
        },
    },
    "UsageRow": {
        "type": "object",
        "required": ["start", "end", "value"],
        "additionalProperties": False,
        "properties": {
            "start": {"type": "integer"},
            "end": {"type": "integer"},
            "value": {"type": "string", "description": "An exact decimal."},
            "group": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["account", "meter", "window", "from", "to", "rows"],
        "additionalProperties": False,
        "properties": {
            "account": {"type": "string"},
            "meter": {"type": "string"},
            "window": {"type": "string", "enum": ["minute", "hour", "day"]},
            "from": {"type": "integer", "description": "Aligned down to the window."},
            "to": {"type": "integer", "description": "Aligned down to the window."},
            "rows": {"type": "array", "items": _ref("UsageRow")},
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "id",
            "account",
            "meter",
            "quantity",
            "time",
            "properties",
            "producer",
            "received_at",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "account": {"type": "string"},
            "meter": {"type": "string"},
            "quantity": {"type": "string", "description": "An exact decimal."},
            "time": {"type": "integer"},
            "properties": {"type": "object", "additionalProperties": {"type": "string"}},
            "producer": {"type": "string"},
            "received_at": {"type": "integer"},
        },
    },
    "Events": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "QuarantinedEvent": {
        "type": "object",
        "required": ["account", "batch_id", "event_id", "error", "at"],
        "additionalProperties": False,
        "properties": {
            "account": {"type": "string"},
            "batch_id": {"type": "integer"},
            "event_id": {"type": "string"},
            "error": {"type": "string"},
            "at": {"type": "integer"},
        },
    },
    "Quarantine": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": _ref("QuarantinedEvent")}},
    },
    "ActorAction": {
        "type": "object",
        "required": ["actor", "action", "status"],
        "additionalProperties": False,
        "properties": {
            "actor": {"type": "string", "description": "The node's path from the root."},
            "action": {"type": "string", "enum": ["restart", "kill"]},
            "status": {"type": "string", "enum": ["running", "restarting", "stopped"]},
        },
    },
}

_ACTOR: Final = {
    "name": "actor",
    "in": "path",
    "required": True,
    "description": "An account id (its meter actor) or a node path from the root joined"
    " by '/', e.g. root/accounts/sweeper.",
    "schema": {"type": "string", "minLength": 1},
}


def _actor_operation(action: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{action}Actor",
            "summary": summary,
            "security": [{"admin": []}],
            "parameters": [_ACTOR],
            "responses": {
                "200": _json(_ref("ActorAction"), "Done; the node's status after."),
                **_errors("401", "404", "409", "500"),
            },
        }
    }


# ---- billing (docs/billing.md) -------------------------------------------------------------

_DECIMAL: Final = {"type": "string", "description": "An exact decimal."}
_DIMENSIONS: Final = {"type": "object", "additionalProperties": {"type": "string"}}
_TIME: Final = {"type": "integer", "description": "Unix ms."}

_WINDOW: Final = {
    "name": "window",
    "in": "query",
    "required": False,
    "description": "Granularity (default hour).",
    "schema": {"type": "string", "enum": ["minute", "hour", "day"]},
}

_PERIOD: Final = {
    "name": "period",
    "in": "path",
    "required": True,
    "description": "A calendar month, UTC, written YYYY-MM (2026-11).",
    "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: every property required but the ``optional`` ones."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        "properties": properties,
    }


_LINE_PROPERTIES: Final = {
    "number": {"type": "integer", "minimum": 1},
    "meter": {"type": "string"},
    "dimensions": _DIMENSIONS,
    "start": _TIME,
    "end": _TIME,
    "usage": _DECIMAL,
    "adjusted": _DECIMAL,
    "quantity": _DECIMAL,
    "unit_price": _DECIMAL,
    "amount": _DECIMAL,
    "rule": {"type": "string"},
    "capped": {"type": "boolean"},
    "adjustments": {"type": "array", "items": {"type": "integer"}},
}

_BILLING_SCHEMAS: Final[dict[str, Any]] = {
    "InvoiceLine": _object(_LINE_PROPERTIES),
    "Unpriced": _object(
        {
            "meter": {"type": "string"},
            "dimensions": _DIMENSIONS,
            "start": _TIME,
            "end": _TIME,
            "usage": _DECIMAL,
        },
    ),
    "LineChange": _object(
        {
            "meter": {"type": "string"},
            "start": _TIME,
            "old": {"oneOf": [_ref("InvoiceLine"), {"type": "null"}]},
            "new": {"oneOf": [_ref("InvoiceLine"), {"type": "null"}]},
            "difference": _DECIMAL,
            "why": {"type": "array", "items": {"type": "string"}},
        },
    ),
    "Restatement": _object(
        {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "period": {"type": "string"},
            "at": _TIME,
            "causes": {"type": "array", "items": {"type": "string"}},
            "old_total": _DECIMAL,
            "new_total": _DECIMAL,
            "difference": _DECIMAL,
            "changes": {"type": "array", "items": _ref("LineChange")},
        },
    ),
    "Invoice": _object(
        {
            "account": {"type": "string"},
            "period": {"type": "string"},
            "currency": {"type": "string"},
            "status": {"type": "string", "enum": ["open", "closed"]},
            "lines": {"type": "array", "items": _ref("InvoiceLine")},
            "unpriced": {"type": "array", "items": _ref("Unpriced")},
            "total": _DECIMAL,
            "closed": _object({"by": {"type": "string"}, "at": _TIME, "total": _DECIMAL}),
            "restatements": {"type": "array", "items": _ref("Restatement")},
        },
        optional=("closed", "restatements"),
    ),
    "Restatements": _object({"restatements": {"type": "array", "items": _ref("Restatement")}}),
    "Adjustment": _object(
        {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "meter": {"type": "string"},
            "start": _TIME,
            "end": _TIME,
            "dimensions": _DIMENSIONS,
            "kind": {"type": "string", "enum": ["credit", "debit"]},
            "quantity": _DECIMAL,
            "by": {"type": "string"},
            "at": _TIME,
            "reason": {"type": "string"},
        },
    ),
    "Void": _object(
        {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "event_id": {"type": "string"},
            "meter": {"type": "string"},
            "time": _TIME,
            "dimensions": _DIMENSIONS,
            "quantity": _DECIMAL,
            "by": {"type": "string"},
            "at": _TIME,
            "reason": {"type": "string"},
        },
    ),
    "AdjustmentRecorded": _object(
        {
            "adjustment": _ref("Adjustment"),
            "restatement": {"oneOf": [_ref("Restatement"), {"type": "null"}]},
        },
    ),
    "VoidRecorded": _object(
        {"void": _ref("Void"), "restatement": {"oneOf": [_ref("Restatement"), {"type": "null"}]}},
    ),
    "Adjustments": _object({"adjustments": {"type": "array", "items": _ref("Adjustment")}}),
    "Voids": _object({"voids": {"type": "array", "items": _ref("Void")}}),
    "Closure": _object(
        {
            "period": {"type": "string"},
            "by": {"type": "string"},
            "at": _TIME,
            "accounts": {"type": "integer", "minimum": 0},
        },
    ),
    "WindowFigure": _object({"start": _TIME, "end": _TIME, "value": _DECIMAL}),
    "ExplainedEvent": _object(
        {
            "id": {"type": "string"},
            "meter": {"type": "string"},
            "time": _TIME,
            "quantity": _DECIMAL,
            "properties": _DIMENSIONS,
            "producer": {"type": "string"},
            "received_at": _TIME,
            "window": _TIME,
            "status": {"type": "string", "enum": ["counted", "voided", "quarantined"]},
            "void": {"type": ["integer", "null"]},
        },
    ),
    "AuditEntry": _object(
        {
            "kind": {"type": "string", "enum": ["duplicate", "rejected"]},
            "id": {"type": ["string", "null"], "description": "Null when it was invalid."},
            "code": {
                "type": ["string", "null"],
                "description": "The rejection code (protocol.md 2.3); null for a duplicate.",
            },
            "message": {"type": ["string", "null"]},
            "meter": {"type": ["string", "null"]},
            "time": {
                "type": ["integer", "null"],
                "description": "The event's time, Unix ms; null when it was invalid.",
            },
            "properties": {
                "oneOf": [_DIMENSIONS, {"type": "null"}],
                "description": "Null when they were invalid.",
            },
            "producer": {"type": ["string", "null"]},
            "seq": {"type": ["integer", "null"], "description": "The producer's batch seq."},
            "batch_id": {
                "type": ["integer", "null"],
                "description": "The journal batch holding the counted copy of the id"
                " (a duplicate, an id_conflict).",
            },
            "received_at": _TIME,
            "window": {
                "type": ["integer", "null"],
                "description": "Start of the window its time falls in; null when the time"
                " was invalid (it is then placed by received_at).",
            },
        },
    ),
    "Explanation": _object(
        {
            "account": {"type": "string"},
            "meter": {"type": "string"},
            "start": _TIME,
            "end": _TIME,
            "filter": _DIMENSIONS,
            "value": _DECIMAL,
            "line": {"oneOf": [_ref("InvoiceLine"), {"type": "null"}]},
            "windows": {"type": "array", "items": _ref("WindowFigure")},
            "events": {"type": "array", "items": _ref("ExplainedEvent")},
            "next_cursor": {"type": ["string", "null"]},
            "adjustments": {"type": "array", "items": _ref("Adjustment")},
            "voids": {"type": "array", "items": _ref("Void")},
            "audit": {
                "type": "array",
                "items": _ref("AuditEntry"),
                "description": "One page of the duplicates and rejected events of the"
                " account in the range that pass the filter.",
            },
            "audit_next_cursor": {"type": ["string", "null"]},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
    ),
    "GraphQLRequest": {
        "type": "object",
        "required": ["query"],
        "properties": {
            "query": {"type": "string"},
            "variables": {"type": ["object", "null"]},
            "operationName": {"type": ["string", "null"]},
        },
    },
    "GraphQLResponse": {
        "type": "object",
        "properties": {
            "data": {"type": ["object", "null"]},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _admin(
    method: str,
    operation_id: str,
    summary: str,
    parameters: list[Any],
    answers: dict[str, Any],
    errors: tuple[str, ...],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One admin operation of billing support."""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"admin": []}],
        "parameters": parameters,
        "responses": {**answers, **_errors(*errors)},
    }
    if body is not None:
        operation["requestBody"] = body
    return {method: operation}


_READ_ERRORS: Final = ("400", "401", "404", "500", "503")
_TEXT_FIELD: Final = {"type": "string", "minLength": 1, "maxLength": 1000}
_LINE: Final = {
    "name": "line",
    "in": "path",
    "required": True,
    "description": "The line number, from 1.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LINE},
}
_EVENT: Final = {
    "name": "event",
    "in": "path",
    "required": True,
    "description": "The event id.",
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}
_PAGE: Final = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Events per page (default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_LIMIT},
    },
    _text("cursor", "next_cursor of the previous page."),
    _text("audit_cursor", "audit_next_cursor of the previous page (of the audit entries)."),
]
_ADJUSTMENT_BODY: Final = _object(
    {
        "meter": {"type": "string", "minLength": 1},
        "start": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_MS,
            "description": "Unix ms, aligned to window.",
        },
        "window": {
            "type": "string",
            "enum": ["minute", "hour", "day"],
            "description": "Default day.",
        },
        "dimensions": _DIMENSIONS,
        "kind": {"type": "string", "enum": ["credit", "debit"]},
        "quantity": {"type": "string", "description": "A decimal > 0, digits only."},
        "by": _TEXT_FIELD,
        "reason": _TEXT_FIELD,
    },
)
_VOID_BODY: Final = _object(
    {
        "by": _TEXT_FIELD,
        "reason": _TEXT_FIELD,
        "period": {
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}$",
            "description": "Search the event in this month only.",
        },
    },
)


def _billing_paths() -> dict[str, Any]:
    invoice = "/v1/accounts/{account}/invoices/{period}"
    explanation = {"200": _json(_ref("Explanation"), "The explanation, one page.")}
    return {
        invoice: _admin(
            "get",
            "invoice",
            "An account's invoice for a month: lines and total; closing and restatements"
            " when closed (a changed rating of a closed month is restated first).",
            [_ACCOUNT, _PERIOD],
            {"200": _json(_ref("Invoice"), "The invoice.")},
            _READ_ERRORS,
        ),
        f"{invoice}/restatements": _admin(
            "get",
            "restatements",
            "The restatements of a closed month, oldest first.",
            [_ACCOUNT, _PERIOD],
            {"200": _json(_ref("Restatements"), "Restatements.")},
            _READ_ERRORS,
        ),
        f"{invoice}/lines/{{line}}/explanation": _admin(
            "get",
            "explainLine",
            "An invoice line down to its windows and (paged) events, with the adjustments"
            " and voids on it.",
            [_ACCOUNT, _PERIOD, _LINE, *_PAGE],
            explanation,
            _READ_ERRORS,
        ),
        "/v1/accounts/{account}/usage/billed": _admin(
            "get",
            "billedUsage",
            "Usage as billed: like /usage, with voided events taken out and adjustments"
            " added in the window they start in.",
            [
                _ACCOUNT,
                _text("meter", "The meter.", required=True),
                _millis("from", "Inclusive, Unix ms (aligned down).", required=True),
                _millis("to", "Exclusive, Unix ms (aligned down); >= from.", required=True),
                _WINDOW,
                _text("group_by", "A dimension of the meter."),
            ],
            {"200": _json(_ref("Usage"), "Rows for the windows that had usage.")},
            _READ_ERRORS,
        ),
        "/v1/accounts/{account}/usage/explanation": _admin(
            "get",
            "explainUsage",
            "One usage figure (a window, optionally one group value) down to its events,"
            " with voids applied and adjustments added.",
            [
                _ACCOUNT,
                _text("meter", "The meter.", required=True),
                _millis("start", "The window's start (aligned down).", required=True),
                _WINDOW,
                _text("group_by", "A dimension of the meter (with group)."),
                _text("group", "That dimension's value (with group_by)."),
                *_PAGE,
            ],
            explanation,
            _READ_ERRORS,
        ),
        "/v1/accounts/{account}/adjustments": {
            **_admin(
                "get",
                "adjustments",
                "Adjustments whose window starts in [from, to), oldest first.",
                [
                    _ACCOUNT,
                    _text("meter", "Only this meter's."),
                    _millis("from", "Inclusive (default 0).", required=False),
                    _millis("to", "Exclusive (default: the greatest time).", required=False),
                ],
                {"200": _json(_ref("Adjustments"), "Adjustments.")},
                _READ_ERRORS,
            ),
            **_admin(
                "post",
                "adjust",
                "Credit or debit a quantity on a summed meter, a window and dimension values"
                " (append-only; a closed month is restated at once).",
                [_ACCOUNT],
                {"201": _json(_ref("AdjustmentRecorded"), "Recorded.")},
                (*_READ_ERRORS, "413"),
                _body(_ADJUSTMENT_BODY, "The adjustment."),
            ),
        },
        "/v1/accounts/{account}/voids": _admin(
            "get",
            "voids",
            "The account's voided events, oldest void first.",
            [_ACCOUNT],
            {"200": _json(_ref("Voids"), "Voids.")},
            ("401", "500"),
        ),
        "/v1/accounts/{account}/events/{event}/void": _admin(
            "post",
            "voidEvent",
            "Take one event out of billed usage (it stays in the journal; a closed month is"
            " restated at once).",
            [_ACCOUNT, _EVENT],
            {"201": _json(_ref("VoidRecorded"), "Recorded.")},
            ("400", "401", "404", "409", "413", "500", "503"),
            _body(_VOID_BODY, "Who and why."),
        ),
        "/v1/periods/{period}/close": _admin(
            "post",
            "closePeriod",
            "Close a finished month for every account: its figures become final.",
            [_PERIOD],
            {"200": _json(_ref("Closure"), "Closed.")},
            ("400", "401", "409", "413", "500", "503"),
            _body(_object({"by": _TEXT_FIELD}), "Who closes it."),
        ),
        "/v1/graphql": _admin(
            "post",
            "graphql",
            "GraphQL over billing: account -> usage, invoices, lines -> explanation (schema:"
            " meterd.billing.SDL).",
            [],
            {
                "200": _json(_ref("GraphQLResponse"), "Executed (field errors in errors)."),
                "400": _json(
                    _ref("GraphQLResponse"),
                    "Not executable: parse or validation error, or over a limit (tokens,"
                    " depth, cost); extensions.code says which.",
                ),
                "429": _json(
                    _ref("GraphQLResponse"),
                    "As many queries as the daemon runs at once are in progress (busy);"
                    " retry after Retry-After seconds.",
                ),
            },
            ("401", "413", "500"),
            _body(_ref("GraphQLRequest"), "A GraphQL request."),
        ),
    }


def _paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Ready when the tree is running and ingest accepts connections.",
                "security": [],
                "responses": {
                    "200": _json(_ref("Health"), "Ready."),
                    "503": _json(_ref("Health"), "Not ready; problems says why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition format.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/v1/tree": {
            "get": {
                "operationId": "tree",
                "summary": "The live supervision tree (live children only).",
                "security": [{"admin": []}],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "At most this many children per node.",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10_000},
                    }
                ],
                "responses": {
                    "200": _json(_ref("TreeNode"), "The root node."),
                    **_errors("400", "401", "500"),
                },
            }
        },
        "/v1/accounts/{account}/usage": {
            "get": {
                "operationId": "usage",
                "summary": "Usage of one account and meter per window, exact.",
                "security": [{"admin": []}],
                "parameters": [
                    _ACCOUNT,
                    _text("meter", "The meter.", required=True),
                    _millis("from", "Inclusive, Unix ms (aligned down).", required=True),
                    _millis("to", "Exclusive, Unix ms (aligned down); >= from.", required=True),
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "description": "Granularity (default hour).",
                        "schema": {"type": "string", "enum": ["minute", "hour", "day"]},
                    },
                    _text("group_by", "A dimension of the meter."),
                ],
                "responses": {
                    "200": _json(_ref("Usage"), "Rows for the windows that had usage."),
                    **_errors("400", "401", "404", "500", "503"),
                },
            }
        },
        "/v1/accounts/{account}/events": {
            "get": {
                "operationId": "events",
                "summary": "The stored events of one account, in ingestion order, paged.",
                "security": [{"admin": []}],
                "parameters": [
                    _ACCOUNT,
                    _text("meter", "Only this meter's events."),
                    _millis("from", "Event time, inclusive (default 0).", required=False),
                    _millis(
                        "to", "Event time, exclusive (default: the greatest time).", required=False
                    ),
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Page size (default 100).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_LIMIT},
                    },
                    _text("cursor", "next_cursor of the previous page."),
                ],
                "responses": {
                    "200": _json(_ref("Events"), "One page."),
                    **_errors("400", "401", "404", "500"),
                },
            }
        },
        "/v1/quarantine": {
            "get": {
                "operationId": "quarantine",
                "summary": "Quarantined (poison) events, oldest first.",
                "security": [{"admin": []}],
                "parameters": [_text("account", "Only this account's.")],
                "responses": {
                    "200": _json(_ref("Quarantine"), "Quarantined events."),
                    **_errors("400", "401", "500"),
                },
            }
        },
        "/v1/actors/{actor}/restart": _actor_operation(
            "restart", "Stop the actor gracefully and start it again."
        ),
        "/v1/actors/{actor}/kill": _actor_operation(
            "kill", "Kill the actor abruptly; its supervisor handles it as a crash."
        ),
        **_billing_paths(),
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The document (built once; treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meterd operator API",
            "version": __version__,
            "description": "protocol.md §3. Errors are always"
            ' {"error": {"code", "message"}}; usage values are exact decimal strings;'
            f" times are integer Unix milliseconds from 0 to {MAX_MS} ({MAX_MS_TEXT}).",
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {**_SCHEMAS, **_BILLING_SCHEMAS},
            "responses": {
                f"E{status}": _json(_ref("Error"), description)
                for status, description in _ERROR_STATUSES.items()
            },
        },
    }
