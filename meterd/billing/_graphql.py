"""GraphQL over billing: account -> usage, invoices, lines -> explanation (Ariadne).

**Why a worker thread.** graphql-core (under Ariadne, Strawberry and Graphene alike) awaits
async resolvers with ``asyncio.gather``/``ensure_future``, which fail under Trio ("trio.run
received unrecognized yield message <_GatheringFuture pending>", checked with graphql-core
3.3.2). So a query is executed **synchronously** (``ariadne.graphql_sync``) on a worker
thread (``trio.to_thread``), and each resolver reaches the async :class:`Billing` service back
on the Trio thread with ``trio.from_thread.run``. The HTTP handler stays a plain Trio
coroutine; resolvers of one query run one after another. What a resolver asks the Trio
thread for is the service's answer only: the service rates on its own worker threads
(:meth:`Billing.off_loop`), and the answer's JSON is built back on the query's thread, so a
large invoice never holds the Trio thread.

Scalars: ``Decimal`` is an exact decimal as a string; ``Millis`` is integer milliseconds
since the epoch as a JSON number (beyond GraphQL's 32-bit ``Int``), ``0..MAX_MS`` like REST's
times (:data:`meterd.model.MAX_MS`). Errors carry
``extensions.code`` (``invalid_parameter``, ``unknown_meter``, ``already_void``, ...), like
the REST errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from functools import partial
from typing import Any, Final, TypeVar

import structlog
import trio
from ariadne import (
    EnumType,
    ObjectType,
    QueryType,
    ScalarType,
    format_error,
    graphql_sync,
    make_executable_schema,
)
from ariadne.validation.query_cost import CostValidator, validate_cost_map
from graphql import (
    SKIP,
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSyntaxError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    ValueNode,
    VisitorAction,
    parse,
)
from graphql.validation import MaxIntrospectionDepthRule

from meterd.model import MAX_MS, MAX_MS_TEXT, Window

from ._errors import BillingError, NotFound, invalid
from ._explain import Explanation
from ._period import Period
from ._rating import InvoiceLine, text
from ._service import GRAPHQL_THREADS, Billing, InvoiceView

__all__ = ["SDL", "BillingGraphQL"]

T = TypeVar("T")
Info = GraphQLResolveInfo[Billing]

SDL: Final = """
"An exact decimal number, as a string (never a float)."
scalar Decimal
"Milliseconds since the Unix epoch, UTC: a JSON integer (GraphQL's Int is only 32 bits)."
scalar Millis

enum Window { MINUTE HOUR DAY }

type Query {
  "One account's usage and invoices (unknown_account if the store has never seen it)."
  account(id: String!): Account!
}

input DimensionInput { name: String!, value: String! }
type Dimension { name: String!, value: String! }

type Account {
  id: String!
  "Usage rows as billing sees them: voids applied, adjustments added."
  usage(meter: String!, from: Millis!, to: Millis!, window: Window! = HOUR,
        groupBy: String): [UsageRow!]!
  "One usage figure (the window at start, of one group value) down to its events."
  usageExplanation(meter: String!, start: Millis!, window: Window!, group: DimensionInput,
                   limit: Int! = 100, cursor: String, auditCursor: String): Explanation!
  "The invoice of a calendar month, UTC, written 2026-11."
  invoice(period: String!): Invoice!
}

type UsageRow { start: Millis!, end: Millis!, value: Decimal!, group: Dimension }

type Invoice {
  account: String!
  period: String!
  currency: String!
  "open, or closed (figures final; changes since are restatements)"
  status: String!
  total: Decimal!
  closed: Closing
  lines: [Line!]!
  unpriced: [Unpriced!]!
  restatements: [Restatement!]!
}

type Closing { by: String!, at: Millis!, total: Decimal! }

type Line {
  number: Int!
  meter: String!
  dimensions: [Dimension!]!
  start: Millis!
  end: Millis!
  usage: Decimal!
  adjusted: Decimal!
  quantity: Decimal!
  unitPrice: Decimal!
  amount: Decimal!
  rule: String!
  capped: Boolean!
  adjustments: [Int!]!
  "The windows and events that make this line (events paged)."
  explanation(limit: Int! = 100, cursor: String, auditCursor: String): Explanation!
}

type Unpriced { meter: String!, dimensions: [Dimension!]!, start: Millis!, end: Millis!,
                usage: Decimal! }

type Restatement {
  id: Int!
  at: Millis!
  causes: [String!]!
  oldTotal: Decimal!
  newTotal: Decimal!
  difference: Decimal!
  changes: [LineChange!]!
}

type LineChange { meter: String!, start: Millis!, old: Line, new: Line, difference: Decimal!,
                  why: [String!]! }

type Explanation {
  meter: String!
  start: Millis!
  end: Millis!
  value: Decimal!
  windows: [WindowFigure!]!
  events: [ExplainedEvent!]!
  nextCursor: String
  adjustments: [Adjustment!]!
  voids: [Void!]!
  "Duplicates and rejected events of the account in the range (paged: auditCursor)."
  audit: [AuditEntry!]!
  auditNextCursor: String
  notes: [String!]!
}

type AuditEntry {
  "duplicate or rejected"
  kind: String!
  "The event's id; null when it was invalid."
  id: String
  "The rejection code (protocol.md 2.3); null for a duplicate."
  code: String
  message: String
  meter: String
  "The event's time; null when it was invalid."
  time: Millis
  "The event's properties; null when they were invalid."
  properties: [Dimension!]
  producer: String
  "The producer's batch seq."
  seq: Int
  "The journal batch holding the counted copy (duplicate, id_conflict)."
  batchId: Int
  receivedAt: Millis!
  "Start of the window its time falls in; null when the time was invalid."
  window: Millis
}

type WindowFigure { start: Millis!, end: Millis!, value: Decimal! }

type ExplainedEvent {
  id: String!
  meter: String!
  time: Millis!
  quantity: Decimal!
  properties: [Dimension!]!
  producer: String!
  receivedAt: Millis!
  window: Millis!
  "counted, voided, quarantined or discarded"
  status: String!
  void: Int
}

type Adjustment { id: Int!, meter: String!, start: Millis!, end: Millis!,
                  dimensions: [Dimension!]!, kind: String!, quantity: Decimal!, by: String!,
                  at: Millis!, reason: String!,
                  "its Idempotency-Key: a retry with it records nothing new (docs/billing.md)"
                  idempotencyKey: String }

type Void { id: Int!, eventId: String!, meter: String!, time: Millis!,
            dimensions: [Dimension!]!, quantity: Decimal!, by: String!, at: Millis!,
            reason: String!,
            "its Idempotency-Key: a retry with it records nothing new (docs/billing.md)"
            idempotencyKey: String }
"""


def _on_trio(info: Info, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` on the Trio thread (resolvers run on a worker thread)."""
    del info
    return trio.from_thread.run(fn, *args)


def _billing(info: Info) -> Billing:
    return info.context


def _period(text_value: str) -> Period:
    try:
        return Period.parse(text_value)
    except ValueError as exc:
        raise invalid("period", str(exc)) from None


def _pairs(mapping: Mapping[str, str] | None) -> list[dict[str, str]] | None:
    if mapping is None:
        return None
    return [{"name": k, "value": v} for k, v in mapping.items()]


def _millis_in_range(value: int) -> int:
    """``value`` if it is a time the API takes (``0..MAX_MS``), else an error with the
    REST code (graphql-core prefixes the argument or variable it came from)."""
    if not 0 <= value <= MAX_MS:
        raise GraphQLError(
            f"Millis: must be Unix milliseconds between 0 and {MAX_MS} ({MAX_MS_TEXT}),"
            f" got {value}",
            extensions={"code": "invalid_parameter"},
        )
    return value


def _millis_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    if not isinstance(node, IntValueNode):
        raise GraphQLError("Millis: expected an integer number of milliseconds")
    return _millis_in_range(int(node.value))


def _millis_value(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphQLError(f"Millis: expected an integer number of milliseconds, got {value!r:.40}")
    return _millis_in_range(value)


decimal_scalar = ScalarType(
    "Decimal", serializer=lambda v: v if isinstance(v, str) else text(Decimal(v))
)
millis_scalar = ScalarType(
    "Millis", serializer=int, value_parser=_millis_value, literal_parser=_millis_literal
)
window_enum = EnumType("Window", {w.name: w for w in Window})

query = QueryType()
account_type = ObjectType("Account")
invoice_type = ObjectType("Invoice")
line_type = ObjectType("Line")


@query.field("account")
def _account(_parent: None, info: Info, id: str) -> dict[str, str]:
    if not id:
        raise invalid("id", "must not be empty")
    if not _on_trio(info, _billing(info).known_account, id):
        raise NotFound(f"no account {id!r} is known to the store", code="unknown_account")
    return {"id": id}


@account_type.field("usage")
def _usage(
    parent: dict[str, str],
    info: Info,
    meter: str,
    window: Window,
    group_by: str | None = None,
    **span: int,
) -> list[dict[str, Any]]:
    rows = _on_trio(
        info, _billing(info).usage, parent["id"], meter, span["from"], span["to"], window, group_by
    )
    return [
        {"start": s, "end": e, "value": v, "group": None if g is None else _pairs(g)[0]}  # type: ignore[index]
        for s, e, v, g in rows
    ]


@account_type.field("usageExplanation")
def _usage_explanation(
    parent: dict[str, str],
    info: Info,
    meter: str,
    start: int,
    window: Window,
    limit: int,
    group: dict[str, str] | None = None,
    cursor: str | None = None,
    audit_cursor: str | None = None,
) -> dict[str, Any]:
    billing = _billing(info)
    wanted = None if group is None else {group["name"]: group["value"]}

    async def explain() -> Explanation:
        return await billing.explain_usage(
            parent["id"],
            meter,
            start,
            window,
            wanted,
            cursor=cursor,
            limit=limit,
            audit_cursor=audit_cursor,
        )

    return _explanation_json(_on_trio(info, explain).to_json())


@account_type.field("invoice")
def _invoice(parent: dict[str, str], info: Info, period: str) -> dict[str, Any]:
    month = _period(period)
    billing = _billing(info)

    async def invoice() -> InvoiceView:
        return await billing.invoice(parent["id"], month)

    out = _on_trio(info, invoice).to_json()  # on this worker thread, not on Trio's
    where = {"_account": parent["id"]}
    out["lines"] = [_line_json(line, where) for line in out["lines"]]
    out["unpriced"] = [_with_pairs(u, "dimensions") for u in out["unpriced"]]
    for restatement in out.get("restatements", []):
        for change in restatement["changes"]:
            for side in ("old", "new"):
                if change[side] is not None:
                    change[side] = _line_json(change[side], where)
    out.setdefault("restatements", [])
    return out


@line_type.field("explanation")
def _line_explanation(
    parent: dict[str, Any],
    info: Info,
    limit: int,
    cursor: str | None = None,
    audit_cursor: str | None = None,
) -> dict[str, Any]:
    billing = _billing(info)

    line = InvoiceLine.from_json(parent["_line"])  # of this query's rating: not re-rated

    async def explain() -> Explanation:
        return await billing.explain_line(
            parent["_account"], line, cursor=cursor, limit=limit, audit_cursor=audit_cursor
        )

    return _explanation_json(_on_trio(info, explain).to_json())


def _with_pairs(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {**item, key: _pairs(item[key])}


def _line_json(line: dict[str, Any], where: Mapping[str, str]) -> dict[str, Any]:
    return {**_with_pairs(line, "dimensions"), **where, "_line": line}


def _explanation_json(found: dict[str, Any]) -> dict[str, Any]:
    found["events"] = [_with_pairs(e, "properties") for e in found["events"]]
    found["adjustments"] = [_with_pairs(a, "dimensions") for a in found["adjustments"]]
    found["voids"] = [_with_pairs(v, "dimensions") for v in found["voids"]]
    found["audit"] = [
        a if a["properties"] is None else _with_pairs(a, "properties") for a in found["audit"]
    ]
    return found


def _format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    formatted = format_error(error, debug)
    original = error.original_error
    if isinstance(original, BillingError):
        formatted["message"] = str(original)
        formatted.setdefault("extensions", {})["code"] = original.code
    elif isinstance(original, GraphQLError) and original.extensions:
        # a scalar's error, wrapped by graphql-core with the variable's name: keep its code
        formatted.setdefault("extensions", {}).update(original.extensions)
    return formatted


SCHEMA: Final = make_executable_schema(
    SDL,
    query,
    account_type,
    invoice_type,
    line_type,
    decimal_scalar,
    millis_scalar,
    window_enum,
    convert_names_case=True,
)


# ---- limits: what a query may cost, how deep and long it may be, how many run at once ------

MAX_QUERY_TOKENS: Final = 1000
"""Lexical tokens a query may have (graphql-core's ``max_lexical_tokens``, enforced while
parsing): a query over every field of the schema has about 300."""
MAX_QUERY_CHARS: Final = 20_000
"""Code points a query may have (graphql-core's ``max_source_length``, checked first)."""
MAX_QUERY_COMMENTS: Final = 100
"""Comments a query may have (graphql-core's ``max_comments``)."""
MAX_DEPTH: Final = 10
"""Fields a query may nest (``{ account { id } }`` is 2; named and inline fragments do not
count). The schema is not recursive: its deepest path
(``account.invoice.restatements.changes.old.explanation.audit.properties.name``) is 9."""
MAX_COST: Final = 1000
"""What a query may cost, by :data:`COSTS` (Ariadne's ``cost_validator``)."""
COSTS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    # What a field costs is roughly the rows it reads. A field missing here costs nothing
    # by itself (it is read from its parent's answer).
    "Query": {"account": {"complexity": 1}},
    "Account": {
        "usage": {"complexity": 10},
        "usageExplanation": {"complexity": 1, "multipliers": ["limit"]},
        "invoice": {"complexity": 100},  # rates the whole month
    },
    # run once per line of the invoice (a number the query does not show): 5 lines assumed
    "Line": {"explanation": {"complexity": 5, "multipliers": ["limit"]}},
}
MAX_IN_PROGRESS: Final = 2 * GRAPHQL_THREADS
"""GraphQL requests one :class:`BillingGraphQL` takes at once: ``GRAPHQL_THREADS``
executing, the rest waiting for a thread; one more is answered 429 ``busy``."""

log = structlog.get_logger("meterd.graphql")
validate_cost_map(COSTS, SCHEMA)  # each type and field named exists (cost errors say none)


class _CostLimit(CostValidator):
    """Ariadne's query cost rule with :data:`COSTS`, its error carrying a code and saying
    what costs what. It reports only that: an argument it cannot read (a bad literal or
    variable) is the spec's rules' or the executor's to report, once."""

    def get_cost_exceeded_error(self) -> GraphQLError:
        error = super().get_cost_exceeded_error()
        return GraphQLError(
            f"The query costs {self.cost}, more than the {self.maximum_cost} a query may cost"
            " (account 1, usage 10, invoice 100, usageExplanation its limit, a line's"
            " explanation 5 x its limit, each alias counted): ask for less or split it",
            extensions={**(error.extensions or {}), "code": "query_too_costly"},
        )


class _CostReports:
    """The validation context as :class:`_CostLimit` sees it: only the cost error is
    reported."""

    def __init__(self, context: ValidationContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def report_error(self, error: GraphQLError) -> None:
        if (error.extensions or {}).get("code") == "query_too_costly":
            self._context.report_error(error)


def _cost_limit(variables: dict[str, Any] | None) -> type[ASTValidationRule]:
    class CostLimit(_CostLimit):
        def __init__(self, context: ValidationContext) -> None:
            reports: Any = _CostReports(context)
            super().__init__(reports, MAX_COST, variables=variables, cost_map=COSTS)

    return CostLimit


class _DepthLimit(ValidationRule):
    """At most :data:`MAX_DEPTH` nested fields on any path of an operation, named
    fragments followed (each one's depth worked out once; a cycle is left to the spec's
    ``NoFragmentCyclesRule``). Introspection (``__schema``, ``__type``) is left to
    graphql-core's ``MaxIntrospectionDepthRule``. graphql-core 3.3.2 itself bounds only
    the nesting the parser can follow (200) and Ariadne 1.1.1 has no depth rule."""

    def enter_document(self, node: DocumentNode, *_args: Any) -> VisitorAction:
        fragments = {
            d.name.value: d for d in node.definitions if isinstance(d, FragmentDefinitionNode)
        }
        depths: dict[str, int] = {}

        def fragment_depth(name: str, on_path: frozenset[str]) -> int:
            if name in depths:
                return depths[name]
            fragment = fragments.get(name)
            if fragment is None or name in on_path:
                return 0
            depth = selection_depth(fragment.selection_set, on_path | {name})
            depths[name] = depth
            return depth

        def selection_depth(top: SelectionSetNode, on_path: frozenset[str]) -> int:
            deepest = 0
            stack = [(top, 1)]
            while stack:
                selection_set, level = stack.pop()
                for selection in selection_set.selections:
                    if isinstance(selection, FieldNode):
                        if selection.name.value.startswith("__"):
                            continue
                        deepest = max(deepest, level)
                        if selection.selection_set is not None:
                            stack.append((selection.selection_set, level + 1))
                    elif isinstance(selection, InlineFragmentNode):
                        stack.append((selection.selection_set, level))
                    elif isinstance(selection, FragmentSpreadNode):
                        below = fragment_depth(selection.name.value, on_path)
                        deepest = max(deepest, level - 1 + below)
            return deepest

        for definition in node.definitions:
            if isinstance(definition, OperationDefinitionNode):
                depth = selection_depth(definition.selection_set, frozenset())
                if depth > MAX_DEPTH:
                    self.report_error(
                        GraphQLError(
                            f"The query nests fields {depth} deep, more than the {MAX_DEPTH}"
                            " levels a query may",
                            definition,
                            extensions={"code": "query_too_deep"},
                        )
                    )
        return SKIP


def _validation_rules(
    _context: Any, _document: DocumentNode, data: dict[str, Any]
) -> list[type[ASTValidationRule]]:
    """The rules run after the spec's: limits on cost and depth, and introspection's."""
    variables = data.get("variables")
    return [_cost_limit(variables), _DepthLimit, MaxIntrospectionDepthRule]


def _parse(_context: Any, data: dict[str, Any]) -> DocumentNode:
    """The query parsed within the limits above; a syntax error carries a code."""
    try:
        return parse(
            data["query"],
            max_lexical_tokens=MAX_QUERY_TOKENS,
            max_comments=MAX_QUERY_COMMENTS,
            max_source_length=MAX_QUERY_CHARS,
        )
    except GraphQLSyntaxError as error:
        if "nested too deeply" in error.description:
            code = "query_too_deep"
        elif "Parsing aborted" in error.description:
            code = "query_too_large"
        else:
            code = "invalid_query"
        error.extensions = {"code": code}
        raise


def _error_code(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, BillingError):
        return original.code
    code = (error.extensions or {}).get("code")
    if code is None and isinstance(original, GraphQLError):
        code = (original.extensions or {}).get("code")
    return str(code or "invalid_query")


class _ErrorLog(logging.Handler):
    """Where Ariadne logs each error of a request (it logs them all at ``error``, a syntax
    error with the query's text): a client's mistake (syntax, validation, a limit, a
    variable, a billing error such as ``unknown_account``) is logged at ``info`` by its code
    and the start of its message; only an unexpected exception in a resolver is an
    ``error``. The query itself is never logged."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, GraphQLError):
            log.error("graphql_error", error=str(record.msg)[:_LOGGED_CHARS])
            return
        path = None if error.path is None else ".".join(map(str, error.path))
        original = error.original_error
        if original is None or isinstance(original, GraphQLError | BillingError):
            log.info(
                "graphql_client_error",
                code=_error_code(error),
                message=error.message[:_LOGGED_CHARS],
                path=path,
            )
        else:
            log.error(
                "graphql_resolver_error",
                path=path,
                error=f"{type(original).__name__}: {original}"[:_LOGGED_CHARS],
            )


_LOGGED_CHARS: Final = 200
_ERROR_LOGGER: Final = logging.getLogger("meterd.graphql")
_ERROR_LOGGER.propagate = False  # not again through the root logger (meterd.logs)
_ERROR_LOGGER.addHandler(_ErrorLog())


class BillingGraphQL:
    """Executes GraphQL requests (``{"query", "variables", "operationName"}``) on
    :class:`Billing`; mount one instance behind an HTTP route and call :meth:`execute`.

    Within limits: :data:`MAX_QUERY_TOKENS` (and characters, comments) while parsing,
    :data:`MAX_DEPTH` and :data:`MAX_COST` while validating (a query over them never runs),
    and :data:`MAX_IN_PROGRESS` requests of this instance at once."""

    def __init__(self, billing: Billing, *, max_in_progress: int = MAX_IN_PROGRESS) -> None:
        self.billing = billing
        self.max_in_progress = max_in_progress
        self.in_progress = 0

    async def execute(self, body: Any) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, JSON result)``: 200 when the query executed (field errors are
        in ``errors``), 400 when the request itself is invalid (parse, validation, a limit,
        body), 429 when :attr:`max_in_progress` requests are in progress already."""
        if self.in_progress >= self.max_in_progress:
            log.info("graphql_busy", in_progress=self.in_progress)
            message = (
                f"{self.in_progress} GraphQL queries are in progress, the most this daemon"
                " runs at once: retry when one has finished"
            )
            return 429, {"errors": [{"message": message, "extensions": {"code": "busy"}}]}
        run = partial(
            graphql_sync,
            SCHEMA,
            body,
            context_value=self.billing,
            query_parser=_parse,
            validation_rules=_validation_rules,
            error_formatter=_format_error,
            logger=_ERROR_LOGGER,
        )
        # The billing service's own threads: a resolver's thread waits on the Trio thread,
        # so queries must not hold the default limiter's tokens other to_thread users need.
        limiter = self.billing.graphql_limiter
        self.in_progress += 1
        try:
            _ok, result = await trio.to_thread.run_sync(run, limiter=limiter)
        finally:
            self.in_progress -= 1
        # GraphQL over HTTP: a request that executed is a 200 even with field errors (they are
        # in "errors", data may be null); one that could not execute has no "data" at all.
        if "data" in result:
            return 200, result
        for error in result.get("errors", []):  # parse and validation errors: a code for each
            error.setdefault("extensions", {}).setdefault("code", "invalid_query")
        return 400, result
