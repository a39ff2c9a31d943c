"""The OpenAPI 3.1 document served at ``/openapi.json``, generated from the operations.

Nothing here describes a route: each operation of :mod:`.routes`, :mod:`.billing` and this
module is declared once (:mod:`.operations`), and its models (:mod:`.models`,
:mod:`.answers`) give the JSON Schemas (``msgspec.json.schema_components``). A path or query
model becomes one parameter per field (its description and bounds with it), a headers
model one header parameter per field (its HTTP name); a body model
the request body; answers and error statuses the responses. The rules of an operation the
schema cannot say are written in its description. The test suite runs schemathesis against
it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, Final

import msgspec
from starlette.responses import Response

from meterd import __version__
from meterd.model import MAX_MS, MAX_MS_TEXT

from . import alerts, billing, cluster, console, quarantine, routes, support
from .answers import Error, json_answer
from .daemon import Daemon
from .operations import GATEWAY, Operation, Operations

_REF: Final = "#/components/schemas/{name}"

ERROR_STATUSES: Final = {
    400: "A parameter is missing or wrong (``error.parameter`` names it), or the body is not"
    " JSON (invalid_body) or nests more than 32 levels (body_too_deep).",
    401: "The admin token is missing or wrong.",
    404: "The account, meter, actor, event or invoice line is unknown, or no such route.",
    405: "The method is not allowed on this route.",
    409: "The actor cannot be acted on now, or its restart failed to start it again"
    " (start_failed: it is left stopped); or a billing conflict (already void, already"
    " closed, period not over, quarantined event); or a quarantined event that cannot be"
    " released or discarded (not_quarantined, discarded, already_released).",
    413: "The body is larger than 1 MiB (body_too_large).",
    500: "An unexpected error (the daemon log has the details).",
    503: "The account's actor could not answer now (unavailable), or the store or the"
    " billing database cannot write (a full disk: nothing was written); retry shortly.",
}

ops = Operations()


@ops.get(
    "/openapi.json",
    "openapi",
    "This document.",
    answers={200: (dict[str, Any], "The OpenAPI document.")},
    admin=False,
    scope=GATEWAY,
)
async def openapi(daemon: Daemon) -> Response:
    return json_answer(openapi_document())


OPERATIONS: Final[tuple[Operation, ...]] = (
    *routes.ops,
    *quarantine.ops,
    *billing.ops,
    *support.ops,
    *console.ops,
    *alerts.ops,
    *cluster.ops,
    *ops,
)
"""Every operation of the API, in the order of the document."""


@cache
def openapi_document() -> dict[str, Any]:
    """The document of :data:`OPERATIONS` (built once; treat it as read-only)."""
    return document(OPERATIONS)


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    operations = list(operations)
    kinds: list[Any] = [Error]
    for op in operations:
        kinds += [op.path_model, op.query_model, op.headers_model]
        kinds += [answer.model for answer in op.answers.values()]
        if op.documented_body is not None:
            kinds.append(op.documented_body)
    found, components = msgspec.json.schema_components(kinds, ref_template=_REF)
    schemas = dict(zip(kinds, found, strict=True))
    parameter_models = {
        m for op in operations for m in (op.path_model, op.query_model, op.headers_model)
    }
    parameters = {m: _parameters(components.pop(m.__name__)) for m in parameter_models}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = [{**p, "in": "path"} for p in parameters[op.path_model]]
        query = [{**p, "in": "query"} for p in parameters[op.query_model]]
        headers = [{**p, "in": "header"} for p in parameters[op.headers_model]]
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(
            op, [*path, *query, *headers], schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meterd operator API",
            "version": __version__,
            "description": "protocol.md §3. Errors are always"
            ' {"error": {"code", "message", "parameter"?}}; usage values are exact decimal'
            f" strings; times are integer Unix milliseconds from 0 to {MAX_MS} ({MAX_MS_TEXT}).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
            "responses": {
                f"E{status}": _content(schemas[Error], description)
                for status, description in ERROR_STATUSES.items()
            },
        },
    }


def _parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter per property of a path or query model's object ``schema``."""
    required = set(schema.get("required", ()))
    out = []
    for name, declared in schema["properties"].items():
        field = _present(declared)
        parameter = {"name": name, "required": name in required}
        if "description" in field:
            parameter["description"] = field.pop("description")
        out.append({**parameter, "schema": field})
    return out


def _present(field: dict[str, Any]) -> dict[str, Any]:
    """The schema of a parameter's value when it is given: ``T | None = None`` in a model
    is an optional parameter, never a null one."""
    options = field.get("anyOf", ())
    if {"type": "null"} not in options or len(options) != 2:
        return dict(field)
    [value] = [option for option in options if option != {"type": "null"}]
    rest = {k: v for k, v in field.items() if k != "anyOf" and (k, v) != ("default", None)}
    return {**value, **rest}


def _content(schema: dict[str, Any], description: str, media: str = "application/json") -> Any:
    return {"description": description, "content": {media: {"schema": schema}}}


def _operation(
    op: Operation, parameters: Sequence[dict[str, Any]], schemas: dict[Any, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id, "summary": op.summary}
    if op.rules:
        out["description"] = (
            "Also refused with 400 (rules the schema cannot say): " + "; ".join(op.rules) + "."
        )
    out["security"] = [{"admin": []}] if op.admin else []
    if parameters:
        out["parameters"] = list(parameters)
    if op.documented_body is not None:
        body = _content(schemas[op.documented_body], op.documented_body.__doc__ or "")
        out["requestBody"] = {"required": True, **body}
    responses: dict[str, Any] = {
        str(status): _content(schemas[answer.model], answer.description, answer.media_type)
        for status, answer in op.answers.items()
    }
    for status in op.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    out["responses"] = responses
    return out


__all__ = ["ERROR_STATUSES", "OPERATIONS", "document", "openapi_document"]
