"""The API's operations, each declared once: route, models, answers.

A route handler is declared with :meth:`Operations.get` / :meth:`~Operations.post` /
:meth:`~Operations.delete`; its
parameters say what it takes::

    @ops.get("/v1/accounts/{account}/usage", "usage", "Usage of one account ...",
             answers={200: (Usage, "Rows ...")}, errors=(400, 401, 404, 500, 503))
    async def usage(daemon: Daemon, path: AccountPath, query: UsageQuery) -> Response: ...

``path``, ``query``, ``headers`` and ``body`` are models of :mod:`.models`: before the
handler runs, the request's path parameters, query string, headers and JSON body are turned
into them (:func:`parse`, :func:`parse_headers`, :func:`parse_body`), and anything wrong is a
400 ``invalid_parameter`` naming the parameter and why. A ``headers`` model reads only the
headers it declares, by their HTTP names (``msgspec.field(name="Idempotency-Key")``). A
handler that takes no ``query`` still refuses any query parameter (a typo is not ignored).
``request`` gives the raw request (GraphQL reads its own body). The same
declaration writes the operation into ``/openapi.json`` (:mod:`.openapi`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, get_type_hints

import msgspec
import msgspec.inspect as mi
from starlette.requests import Request
from starlette.responses import Response

from .auth import require_admin
from .bodies import read_json
from .errors import ApiError, bad_parameter
from .models import Model, NoParameters

if TYPE_CHECKING:
    from .daemon import Daemon

M = TypeVar("M", bound=Model)
H = TypeVar("H", bound=Callable[..., Awaitable[Response]])

Handler = Callable[..., Awaitable[Response]]

_INTEGER: Final = re.compile(r"-?[0-9]{1,20}")
_AT: Final = re.compile(r" - at `\$\.([^`\[]+)")
_CONVERTER: Final = re.compile(r"\{(\w+):\w+\}")


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented answer: ``model`` is a JSON model (or ``str`` for text)."""

    model: Any
    description: str
    media_type: str = "application/json"


ScopeKind = Literal["account", "actor", "shards", "find", "graphql", "gateway"]


@dataclass(frozen=True, slots=True)
class Scope:
    """Where an operation is answered when accounts live in owner processes' shards
    (docs/partitions.md, "API across owners"; :mod:`meterd.api.gateway` routes by it):

    * ``account``: the shard of the ``{account}`` path parameter;
    * ``actor``: ``{actor}`` is an account id (its shard) or a node path (the shard whose
      ``shard-SSS`` node it goes through; the gateway's own tree otherwise);
    * ``shards``: every shard, the answers merged by the merge named ``merge``;
    * ``find``: the one shard that has what the path names (the first answer not a 404);
    * ``graphql``: the shard of the account the GraphQL query names;
    * ``gateway``: the gateway itself (``merge`` names how, when it is more than the
      operation's own handler on the configuration).
    """

    kind: ScopeKind
    merge: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "shards" and self.merge is None:
            raise TypeError("scope 'shards' needs the name of its merge")
        if self.kind not in ("shards", "gateway") and self.merge is not None:
            raise TypeError(f"scope {self.kind!r} takes no merge")


ACCOUNT: Final = Scope("account")
ACTOR: Final = Scope("actor")
FIND: Final = Scope("find")
GRAPHQL: Final = Scope("graphql")
GATEWAY: Final = Scope("gateway")


def every_shard(merge: str) -> Scope:
    """Asked of every shard, the answers merged by ``merge`` (:mod:`meterd.api.gateway`)."""
    return Scope("shards", merge)


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    route: str  # starlette's path, converters included: /v1/actors/{actor:path}/kill
    id: str
    summary: str
    handler: Handler
    path_model: type[Model]
    query_model: type[Model]
    body_model: type[Model] | None
    takes_request: bool
    answers: Mapping[int, Answer]
    errors: tuple[int, ...]
    admin: bool
    documented_body: Any  # the body's model for the document (= body_model, or GraphQL's)
    own_rules: tuple[str, ...]
    scope: Scope | None = None  # across owner processes (None: not declared, a test fails)
    headers_model: type[Model] = NoParameters  # request headers it reads (by their names)

    @property
    def path(self) -> str:
        """The OpenAPI path: ``/v1/actors/{actor}/kill``."""
        return _CONVERTER.sub(r"{\1}", self.route)

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules of this operation the schema cannot say (a schema-valid request may be
        refused 400 for them): its models' and its own."""
        models = (self.path_model, self.query_model, self.headers_model, self.body_model)
        return tuple(rule for m in models if m is not None for rule in m.rules) + self.own_rules

    async def call(self, daemon: Daemon, request: Request) -> Response:
        """Check the admin token (401), parse what the handler takes from ``request`` (400
        naming what is wrong), then run the handler."""
        if self.admin:
            require_admin(request, daemon.config.api)
        kwargs: dict[str, Any] = {}
        path = parse(self.path_model, request.path_params)
        query = parse(self.query_model, request.query_params)
        if self.path_model is not NoParameters:
            kwargs["path"] = path
        if self.query_model is not NoParameters:
            kwargs["query"] = query
        if self.headers_model is not NoParameters:
            kwargs["headers"] = parse_headers(self.headers_model, request.headers)
        if self.body_model is not None:
            kwargs["body"] = await parse_body(self.body_model, request)
        if self.takes_request:
            kwargs["request"] = request
        return await self.handler(daemon, **kwargs)


class Operations:
    """The operations of one module, in declaration order."""

    def __init__(self) -> None:
        self._all: list[Operation] = []

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._all)

    def get(
        self,
        route: str,
        id: str,
        summary: str,
        *,
        answers: Mapping[int, tuple[Any, str]],
        errors: tuple[int, ...] = (),
        admin: bool = True,
        rules: tuple[str, ...] = (),
        scope: Scope | None = None,
    ) -> Callable[[H], H]:
        """Declare the decorated handler as ``GET route`` (see the module doc)."""
        return self._declare("GET", route, id, summary, answers, errors, admin, rules, None, scope)

    def delete(
        self,
        route: str,
        id: str,
        summary: str,
        *,
        answers: Mapping[int, tuple[Any, str]],
        errors: tuple[int, ...] = (),
        admin: bool = True,
        rules: tuple[str, ...] = (),
        scope: Scope | None = None,
    ) -> Callable[[H], H]:
        """Declare the decorated handler as ``DELETE route``."""
        return self._declare(
            "DELETE", route, id, summary, answers, errors, admin, rules, None, scope
        )

    def post(
        self,
        route: str,
        id: str,
        summary: str,
        *,
        answers: Mapping[int, tuple[Any, str]],
        errors: tuple[int, ...] = (),
        admin: bool = True,
        rules: tuple[str, ...] = (),
        documented_body: Any = None,
        scope: Scope | None = None,
    ) -> Callable[[H], H]:
        """Declare the decorated handler as ``POST route``; ``documented_body`` is the body
        the document shows when the handler reads its own (takes ``request``)."""
        return self._declare(
            "POST", route, id, summary, answers, errors, admin, rules, documented_body, scope
        )

    def _declare(
        self,
        method: str,
        route: str,
        id: str,
        summary: str,
        answers: Mapping[int, tuple[Any, str]],
        errors: tuple[int, ...],
        admin: bool,
        rules: tuple[str, ...],
        documented_body: Any,
        scope: Scope | None,
    ) -> Callable[[H], H]:
        def declare(handler: H) -> H:
            hints = get_type_hints(handler)
            body = hints.get("body")
            operation = Operation(
                method=method,
                route=route,
                id=id,
                summary=summary,
                handler=handler,
                path_model=hints.get("path", NoParameters),
                query_model=hints.get("query", NoParameters),
                body_model=body,
                takes_request="request" in hints,
                answers={
                    status: Answer(model, text, _media_type(model))
                    for status, (model, text) in answers.items()
                },
                errors=errors,
                admin=admin,
                documented_body=body if documented_body is None else documented_body,
                own_rules=rules,
                scope=scope,
                headers_model=hints.get("headers", NoParameters),
            )
            _check_path(operation)
            self._all.append(operation)
            return handler

        return declare


def _media_type(model: Any) -> str:
    return "text/plain" if model is str else "application/json"


def _check_path(operation: Operation) -> None:
    named = set(re.findall(r"\{(\w+)", operation.route))
    declared = {field.encode_name for field in msgspec.structs.fields(operation.path_model)}
    if named != declared:
        raise TypeError(
            f"{operation.id}: the path {operation.route} names {sorted(named)} but its model"
            f" {operation.path_model.__name__} declares {sorted(declared)}"
        )


# ---- parsing --------------------------------------------------------------------------------


def parse(model: type[M], values: Mapping[str, str]) -> M:
    """``model`` from path parameters or a query string (all text): the first unknown name,
    then each value in the model's order (integers in decimal digits), then the first
    missing one by name, then the model's own rules; a 400 naming the parameter otherwise."""
    fields = _fields(model)
    for name in values:
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise bad_parameter(name, f"is not a parameter of this route (known: {known})")
    typed: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in values:
            continue
        text = values[name]
        if not text:
            raise bad_parameter(name, "must not be empty")
        if isinstance(_bare(field.type), mi.IntType):
            if not _INTEGER.fullmatch(text):
                raise bad_parameter(name, f"must be an integer, not {text!r:.40}")
            typed[name] = int(text)
        else:
            typed[name] = text
    return _convert(model, typed, fields)


def parse_headers(model: type[M], headers: Mapping[str, str]) -> M:
    """``model`` from the request's ``headers`` (names without regard to case): only the
    headers it declares are read, then checked as :func:`parse` checks a query string."""
    found = {name: headers[name] for name in _fields(model) if name in headers}
    return parse(model, found)


async def parse_body(model: type[M], request: Request) -> M:
    """``model`` from the request's JSON body (:func:`.bodies.read_json`: bounded in size
    and depth): a JSON object, the first unknown field, then each value in the body's order,
    then the first missing one by name, then the model's own rules; a 400 naming the field
    otherwise."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    fields = _fields(model)
    for name in body:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise bad_parameter(name, f"is not a field of this body (known: {known})")
    return _convert(model, body, fields)


@cache
def _fields(model: type[Model]) -> Mapping[str, mi.Field]:
    """``model``'s fields by name (``msgspec.inspect`` is slow: ~0.2 ms, once per model)."""
    info = mi.type_info(model)
    assert isinstance(info, mi.StructType)
    return {field.encode_name: field for field in info.fields}


def _check_required(fields: Mapping[str, mi.Field], values: Mapping[str, Any]) -> None:
    for name in sorted(name for name, field in fields.items() if field.required):
        if name not in values:
            raise bad_parameter(name, "is required")


def _convert(model: type[M], values: dict[str, Any], fields: Mapping[str, mi.Field]) -> M:
    """msgspec's check of ``values`` against ``model`` (strict: no type is coerced), its
    error said for a person: which field, and why, from the field's declaration."""
    try:
        return msgspec.convert(values, model, strict=True)
    except msgspec.ValidationError as error:
        if str(error).startswith("Object missing required field"):  # after the given values
            _check_required(fields, values)
        found = _AT.search(str(error))
        if found is None or found[1] not in fields:  # not expected: every check names a field
            raise ApiError(400, "invalid_parameter", str(error)) from None
        name = found[1]
        raise bad_parameter(name, why(fields[name].type, values[name])) from None


def why(kind: mi.Type, value: Any) -> str:
    """Why ``value`` does not fit the declared ``kind``, as the end of a sentence that
    starts with the parameter's name: the field's own ``why`` if it has one."""
    kind, bare = _one(kind), _bare(kind)
    # Unix ms or an ISO-8601 string (an adjustment's start): a JSON value of neither kind
    if (
        isinstance(bare, mi.UnionType)
        and (isinstance(value, bool) or not isinstance(value, str | int))
        and {type(_bare(t)) for t in bare.types} == {mi.IntType, mi.StrType}
    ):
        return f"must be an integer, not {_shown(value)} (or an ISO-8601 date as a string)"
    if isinstance(bare, mi.IntType) and (not isinstance(value, int) or isinstance(value, bool)):
        return f"must be an integer, not {_shown(value)}"
    if isinstance(bare, mi.StrType) and not isinstance(value, str):
        return f"must be a string, not {_shown(value)}"
    custom = kind.extra.get("why") if isinstance(kind, mi.Metadata) and kind.extra else None
    if custom is not None:
        return str(custom).format(value=_shown(value))
    if isinstance(bare, (mi.EnumType, mi.LiteralType)):
        allowed = [m.value for m in bare.cls] if isinstance(bare, mi.EnumType) else bare.values
        return f"must be one of {', '.join(map(str, allowed))}, not {_shown(value)}"
    if isinstance(bare, mi.IntType):
        return f"must be between {bare.ge} and {bare.le}, not {value}"
    if isinstance(bare, mi.StrType):
        if bare.max_length is not None and len(value) > bare.max_length:
            return f"must be at most {bare.max_length} characters"
        if bare.min_length and len(value) < bare.min_length:
            return "must not be empty"
        return f"must match {bare.pattern}, not {_shown(value)}"
    if isinstance(bare, mi.DictType):
        return f"must be an object of strings, not {_shown(value)}"
    return f"is not valid: {_shown(value)}"


def _one(kind: mi.Type) -> mi.Type:
    """``T`` of ``T | None`` (an omitted parameter is None: a value is never null here)."""
    if isinstance(kind, mi.UnionType):
        return next(t for t in kind.types if not isinstance(t, mi.NoneType))
    return kind


def _bare(kind: mi.Type) -> mi.Type:
    """``T`` without its ``Annotated`` metadata (and of ``T | None``)."""
    kind = _one(kind)
    return kind.type if isinstance(kind, mi.Metadata) else kind


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return f"{value!r:.40}"
    return json.dumps(value)[:40]
