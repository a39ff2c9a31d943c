"""The OpenAPI 3.1 document of the API, served at ``/openapi.json``.

Written by hand, next to the routes it describes (:mod:`.routes`); the test suite runs
schemathesis against it, so a route, parameter or answer that drifts from it fails.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from meterd import __version__
from meterd.store.reader import MAX_EVENTS_LIMIT

MAX_MS: Final = 2**63 - 1

_ERROR_STATUSES: Final = {
    "400": "A parameter is missing or wrong (``error.parameter`` names it).",
    "401": "The admin token is missing or wrong.",
    "404": "The account, meter or actor is unknown, or no such route.",
    "405": "The method is not allowed on this route.",
    "409": "The actor cannot be acted on now.",
    "500": "An unexpected error (the daemon log has the details).",
    "503": "The store cannot write (a full disk), so the usage could not be brought up to date.",
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
                    _millis("to", "Event time, exclusive (default 2^63-1).", required=False),
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
            " times are integer Unix milliseconds.",
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
            "responses": {
                f"E{status}": _json(_ref("Error"), description)
                for status, description in _ERROR_STATUSES.items()
            },
        },
    }
