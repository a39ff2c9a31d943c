"""The API's request models (meterd/api/models.py) and how a request is read into them
(meterd/api/operations.py), in process: every refusal names the parameter and says why;
the patterns the document states are exactly what the parsers behind them take; and the
generated document states the bounds the daemon applies.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

import meterd.api
from meterd.api.errors import ApiError
from meterd.api.models import (
    AUDIT_CURSOR_PATTERN,
    CURSOR_PATTERN,
    DECIMAL_PATTERN,
    LAST_BILLABLE_MS,
    MAX_LINE,
    MAX_TEXT,
    NOT_BLANK_PATTERN,
    PERIOD_PATTERN,
    AdjustmentBody,
    EventsQuery,
    LinePath,
    Model,
    TreeQuery,
    UsageExplanationQuery,
    UsageQuery,
    VoidBody,
)
from meterd.api.openapi import OPERATIONS, openapi_document
from meterd.api.operations import parse, parse_body
from meterd.billing import AdjustmentKind, Period
from meterd.billing._service import _PLAIN_DECIMAL
from meterd.model import MAX_MS, Window
from meterd.store import InvalidCursor
from meterd.store.reader import MAX_EVENTS_LIMIT, _decode_audit_cursor, decode_cursor

BASE = {"meter": "m", "from": "0", "to": "1000"}

QUERIES: list[tuple[type[Model], dict[str, str], str, str]] = [
    (UsageQuery, {**BASE, "grup_by": "x"}, "grup_by", "is not a parameter of this route"),
    (UsageQuery, {**BASE, "meter": ""}, "meter", "must not be empty"),
    (UsageQuery, {**BASE, "from": "12.5"}, "from", "must be an integer, not '12.5'"),
    (UsageQuery, {**BASE, "from": "1e3"}, "from", "must be an integer"),
    (UsageQuery, {**BASE, "from": "-1"}, "from", f"between 0 and {MAX_MS}"),
    (UsageQuery, {**BASE, "to": str(2**63)}, "to", "9999-12-31T23:59:59.999Z"),
    (UsageQuery, {**BASE, "from": "2000"}, "from", "must not be after 'to' (2000 > 1000)"),
    (UsageQuery, {**BASE, "window": "week"}, "window", "one of minute, hour, day, not 'week'"),
    (UsageQuery, {"from": "0", "to": "1"}, "meter", "is required"),
    (UsageQuery, {}, "from", "is required"),  # the first missing one by name
    # a wrong value is said before a missing one (here 'to')
    (UsageQuery, {"meter": "m", "from": str(MAX_MS + 1)}, "from", f"between 0 and {MAX_MS}"),
    (TreeQuery, {"limit": "10001"}, "limit", "must be between 0 and 10000, not 10001"),
    (TreeQuery, {"limit": "many"}, "limit", "must be an integer, not 'many'"),
    (EventsQuery, {"limit": "0"}, "limit", f"must be between 1 and {MAX_EVENTS_LIMIT}, not 0"),
    (EventsQuery, {"cursor": "1.x"}, "cursor", "is not a cursor this server issued"),
    (EventsQuery, {"from": "5", "to": "4"}, "from", "must not be after 'to'"),
    (
        UsageExplanationQuery,
        {"meter": "m", "start": "0", "group": "std"},
        "group",
        "and group_by go together",
    ),
    (
        UsageExplanationQuery,
        {"meter": "m", "start": "0", "audit_cursor": "zz"},
        "audit_cursor",
        "is not a cursor this server issued",
    ),
    (LinePath, {"account": "a", "period": "2026-11", "line": "0"}, "line", "between 1 and"),
    (LinePath, {"account": "a", "period": "2026-11", "line": "\u00b2"}, "line", "an integer"),
    (LinePath, {"account": "a", "period": "2026-13", "line": "1"}, "period", "not a month"),
]


@pytest.mark.parametrize(("model", "values", "name", "why"), QUERIES)
def test_query_and_path_refusals_name_the_parameter_and_say_why(
    model: type[Model], values: dict[str, str], name: str, why: str
) -> None:
    with pytest.raises(ApiError) as raised:
        parse(model, values)
    error = raised.value
    assert (error.status, error.code, error.parameter) == (400, "invalid_parameter", name)
    assert error.message.startswith(f"parameter {name!r} ")
    assert why in error.message


def test_query_values_become_typed_with_the_declared_defaults() -> None:
    query = parse(UsageQuery, {"meter": "m", "from": "007", "to": str(MAX_MS)})
    assert (query.meter, query.from_, query.to, query.window, query.group_by) == (
        "m",
        7,
        MAX_MS,
        Window.HOUR,
        None,
    )
    events = parse(EventsQuery, {})
    assert (events.from_, events.to, events.limit, events.cursor) == (0, MAX_MS, 100, None)


def body_request(body: Any) -> Request:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    headers = [(b"content-length", str(len(content)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


ADJUSTMENT = {
    "meter": "dyno.seconds",
    "start": 0,
    "kind": "credit",
    "quantity": "1.5",
    "by": "ops",
    "reason": "outage",
}

BODIES: list[tuple[type[Model], Any, str, str]] = [
    (AdjustmentBody, {"meter": "m"}, "by", "is required"),  # the first missing one by name
    (AdjustmentBody, {**ADJUSTMENT, "note": 1}, "note", "is not a field of this body"),
    (AdjustmentBody, {**ADJUSTMENT, "start": True}, "start", "must be an integer, not true"),
    (AdjustmentBody, {**ADJUSTMENT, "start": 1.0}, "start", "must be an integer, not 1.0"),
    (AdjustmentBody, {**ADJUSTMENT, "start": MAX_MS}, "start", "billable month"),
    (AdjustmentBody, {**ADJUSTMENT, "kind": "gift"}, "kind", "one of credit, debit, not 'gift'"),
    (AdjustmentBody, {**ADJUSTMENT, "window": "week"}, "window", "one of minute, hour, day"),
    (AdjustmentBody, {**ADJUSTMENT, "dimensions": {"a": 1}}, "dimensions", "object of strings"),
    (AdjustmentBody, {**ADJUSTMENT, "quantity": "1e3"}, "quantity", "a decimal like '12.5'"),
    (AdjustmentBody, {**ADJUSTMENT, "quantity": 1}, "quantity", "must be a string, not 1"),
    (AdjustmentBody, {**ADJUSTMENT, "by": "  "}, "by", f"1 to {MAX_TEXT} characters"),
    (AdjustmentBody, {**ADJUSTMENT, "reason": "x" * 1001}, "reason", f"1 to {MAX_TEXT}"),
    (VoidBody, {"by": "a", "reason": "b", "period": None}, "period", "must be a string, not null"),
    (VoidBody, {"by": "a", "reason": "b", "period": "2026-1"}, "period", "not a month"),
]


@pytest.mark.parametrize(("model", "body", "name", "why"), BODIES)
async def test_body_refusals_name_the_field_and_say_why(
    model: type[Model], body: Any, name: str, why: str
) -> None:
    with pytest.raises(ApiError) as raised:
        await parse_body(model, body_request(body))
    error = raised.value
    assert (error.status, error.code, error.parameter) == (400, "invalid_parameter", name)
    assert why in error.message, error.message


@pytest.mark.parametrize("body", [[], "x", 1, None])
async def test_a_body_that_is_not_an_object_is_invalid_body(body: Any) -> None:
    with pytest.raises(ApiError) as raised:
        await parse_body(VoidBody, body_request(body))
    assert (raised.value.status, raised.value.code) == (400, "invalid_body")


async def test_a_body_becomes_typed_with_the_declared_defaults() -> None:
    body = await parse_body(AdjustmentBody, body_request(ADJUSTMENT))
    assert (body.window, body.kind, body.dimensions, body.start) == (
        Window.DAY,
        AdjustmentKind.CREDIT,
        {},
        0,
    )


# ---- the patterns the document states are what the parsers take ------------------------------


@cache
def _validator(pattern: str) -> Any:
    return jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


def _schema_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` as JSON Schema says (the validator schemathesis
    uses; ``$`` is the very end there, as in ECMA 262, where Python's also takes a final
    newline)."""
    return bool(_validator(pattern).is_valid(text))


def _takes(parse_text: Any, text: str) -> bool:
    try:
        parse_text(text)
    except (ValueError, InvalidCursor):
        return False
    return True


MONTHS = st.one_of(st.text(max_size=12), st.from_regex(r"[0-9]{4}-[0-9]{2}", fullmatch=True))
CURSORS = st.one_of(
    st.text(max_size=30), st.from_regex(r"-?[0-9]{1,20}\.[0-9]{1,11}", fullmatch=True)
)
DECIMALS = st.one_of(
    st.text(max_size=70), st.from_regex(r"[0-9]{1,31}(\.[0-9]{0,31})?", fullmatch=True)
)


@given(MONTHS)
def test_the_period_pattern_is_what_period_parse_takes(text: str) -> None:
    assert _schema_match(PERIOD_PATTERN, text) == _takes(Period.parse, text)


@given(CURSORS)
def test_the_cursor_patterns_are_what_the_store_takes(text: str) -> None:
    assert _schema_match(CURSOR_PATTERN, text) == _takes(decode_cursor, text)
    assert _schema_match(AUDIT_CURSOR_PATTERN, text) == _takes(_decode_audit_cursor, text)


@given(DECIMALS)
def test_the_quantity_pattern_is_what_billing_takes(text: str) -> None:
    assert _schema_match(DECIMAL_PATTERN, text) == (_PLAIN_DECIMAL.fullmatch(text) is not None)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=3))
def test_the_not_blank_pattern_is_what_billing_takes(text: str) -> None:
    assert _schema_match(NOT_BLANK_PATTERN, text) == bool(text.strip())
    assert (re.search(NOT_BLANK_PATTERN, text) is not None) == bool(text.strip())  # msgspec's


def test_the_not_blank_pattern_knows_every_blank_character() -> None:
    for code in range(sys.maxunicode + 1):
        if not 0xD800 <= code <= 0xDFFF:
            character = chr(code)
            assert _schema_match(NOT_BLANK_PATTERN, character) != character.isspace(), hex(code)


def test_the_last_billable_time_ends_the_last_billable_month() -> None:
    assert Period.containing(LAST_BILLABLE_MS) == Period(9998, 12)
    with pytest.raises(ValueError, match="9999-01"):
        Period.containing(LAST_BILLABLE_MS + 1)


# ---- the document states the bounds ----------------------------------------------------------


def _parameters() -> list[tuple[str, dict[str, Any]]]:
    paths = openapi_document()["paths"]
    return [
        (operation["operationId"], parameter)
        for methods in paths.values()
        for operation in methods.values()
        for parameter in operation.get("parameters", [])
    ]


def test_the_document_states_every_bound_the_daemon_applies() -> None:
    for operation, parameter in _parameters():
        schema, name = parameter["schema"], parameter["name"]
        assert "anyOf" not in schema, (operation, name)  # absent, never null
        if name in ("from", "to", "start"):
            assert (schema["minimum"], schema["maximum"]) == (0, MAX_MS), (operation, name)
        if name == "limit" and operation != "tree":
            assert (schema["minimum"], schema["maximum"]) == (1, MAX_EVENTS_LIMIT)
        if name == "period":
            assert schema["pattern"] == PERIOD_PATTERN
        if name == "line":
            assert (schema["minimum"], schema["maximum"]) == (1, MAX_LINE)
        if name in ("cursor", "audit_cursor"):
            assert schema["pattern"] in (CURSOR_PATTERN, AUDIT_CURSOR_PATTERN)
    bodies = openapi_document()["components"]["schemas"]
    adjustment = bodies["AdjustmentBody"]["properties"]
    assert adjustment["start"]["anyOf"][0]["maximum"] == LAST_BILLABLE_MS  # or ISO-8601
    assert adjustment["quantity"]["pattern"] == DECIMAL_PATTERN
    for body in ("AdjustmentBody", "VoidBody", "CloseBody"):
        assert bodies[body]["additionalProperties"] is False
        assert bodies[body]["properties"]["by"]["maxLength"] == MAX_TEXT


def test_every_operation_has_its_route_once() -> None:
    keys = [(op.method, op.path) for op in OPERATIONS]
    assert len(keys) == len(set(keys))
    assert {op.id for op in OPERATIONS} == {
        operation["operationId"]
        for methods in openapi_document()["paths"].values()
        for operation in methods.values()
    }


def test_meterd_api_has_no_import_cycle() -> None:
    """Among meterd/api's modules, type-checking imports included (Daemon lives in its own
    module, so billing.py no longer imports routes.py back)."""
    package = Path(meterd.api.__file__).parent
    imports: dict[str, set[str]] = {}
    for source in package.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("meterd.api."):
                found.add((node.module or "").removeprefix("meterd.api."))
        imports[source.stem] = {name.split(".")[0] for name in found} - {"__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for imported in imports.get(module, ()):
                visit(imported, (*path, module))
            done.add(module)

    for module in imports:
        visit(module, ())
