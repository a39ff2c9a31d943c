"""JSON bodies of requests, read within bounds (:func:`read_json`); their shapes are
models of :mod:`.models`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from starlette.requests import Request

from .errors import ApiError

MAX_BODY_BYTES: Final = 1 << 20
"""The largest request body read (1 MiB): billing's bodies are a few hundred bytes, a
GraphQL query a few KiB. A larger one is answered 413 before it is all received."""
MAX_JSON_DEPTH: Final = 32
"""The deepest nesting of arrays and objects in a request body (billing's bodies nest 2
levels, GraphQL variables 3-4); deeper is answered 400."""


async def read_body(request: Request) -> bytes:
    """The request's body, at most :data:`MAX_BODY_BYTES` (413 ``body_too_large``, checked
    on ``Content-Length`` and again as the body streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:12]) > MAX_BODY_BYTES:
        raise _too_large(f"Content-Length is {declared}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(f"more than {MAX_BODY_BYTES} bytes were sent")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The request's body parsed as JSON, at most :data:`MAX_BODY_BYTES` (413
    ``body_too_large``, checked on ``Content-Length`` and again as the body streams in) and
    :data:`MAX_JSON_DEPTH` levels deep (400 ``body_too_deep``); 400 ``invalid_body`` if it is
    not JSON."""
    body = await read_body(request)
    try:
        value = json.loads(body)
    except RecursionError:  # the decoder's own bound (the interpreter's recursion limit)
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_body", f"the body is not JSON: {error}") from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _too_deep()
    return value


def _too_large(what: str) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the body is too large: {what}, and at most {MAX_BODY_BYTES} bytes are read",
        close=True,
    )


def _too_deep() -> ApiError:
    return ApiError(
        400,
        "body_too_deep",
        f"the body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
    )


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` levels (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
