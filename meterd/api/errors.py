"""The API's one error shape: ``{"error": {"code", "message", "parameter"?}}`` (protocol.md
§3, :class:`.answers.Error`).

Handlers raise :class:`ApiError`; :func:`exception_handlers` turns it, starlette's own
``HTTPException`` (unknown path 404, wrong method 405) and any unexpected exception (500)
into that shape, so a client never sees another body for an error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any, Final

import structlog
from msgspec import UNSET
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import supervisors as sv
from meterd.store import CommitFailed

from .answers import Error, ErrorDetail, json_answer

log = structlog.get_logger("meterd.api")

#: The ``code`` for each status starlette raises by itself.
_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """An error answer: HTTP ``status``, a stable ``code`` and a sentence for a person.

    ``parameter`` names the query or path parameter at fault (400s), for clients that
    point at it.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        close: bool = False,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.problems = problems  # every problem of a body checked whole (each names its field)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.close = close
        """Answer with ``Connection: close``: the request was refused before its body was
        read to the end, so the connection cannot carry another request. Said in the answer,
        so a client's connection pool does not send its next request down a connection the
        server is closing (it would see a disconnect with no answer)."""


def bad_parameter(name: str, why: str) -> ApiError:
    """400 ``invalid_parameter``: ``name`` and why it is wrong, in one sentence."""
    return ApiError(400, "invalid_parameter", f"parameter {name!r} {why}", parameter=name)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
    problems: list[str] | None = None,
) -> Response:
    detail = ErrorDetail(
        code=code,
        message=message,
        parameter=UNSET if parameter is None else parameter,
        problems=UNSET if problems is None else problems,
    )
    return json_answer(Error(error=detail), status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"connection": "close"} if exc.close else None
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        parameter=exc.parameter,
        headers=headers,
        problems=exc.problems,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = {
        404: f"no route for {request.url.path!r}",
        405: f"method {request.method} is not allowed on {request.url.path!r}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, code, message, headers=exc.headers)


def _log_failure(emit: Any, event: str, request: Request, exc: Exception) -> None:
    # Only the route and the error: the request's headers (the token) are never logged.
    emit(event, method=request.method, path=request.url.path, error=f"{type(exc).__name__}: {exc}")


async def _unexpected(request: Request, exc: Exception) -> Response:
    _log_failure(log.error, "api_internal_error", request, exc)
    return error_response(500, "internal", "internal error; the daemon log has the details")


async def _store_failed(request: Request, exc: Exception) -> Response:
    # A query first checkpoints the account; on a full disk that commit fails.
    return error_response(
        503,
        "store_unavailable",
        f"the store cannot write, so the account's usage could not be brought up to date: {exc}",
    )


async def _database_error(request: Request, exc: Exception) -> Response:
    # A full disk under another database than the store's writer (the billing database).
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return error_response(
            503, "disk_full", f"the disk is full, nothing was written ({exc}); retry once freed"
        )
    return await _unexpected(request, exc)


async def _actor_unavailable(request: Request, exc: Exception) -> Response:
    # The account's actor did not answer (timed out, crashed, its supervisor is stopping or
    # restarting): a transient state of the daemon, not a bug. The client may retry.
    _log_failure(log.warning, "api_actor_unavailable", request, exc)
    return error_response(
        503,
        "unavailable",
        f"the account's actor could not answer ({type(exc).__name__}); retry shortly",
    )


def exception_handlers() -> dict[Any, Any]:
    """Starlette ``exception_handlers`` producing the error shape for every error."""
    unavailable = (
        sv.CallTimeout,
        sv.NoSuchActor,
        sv.ActorExited,
        sv.SupervisorStopping,
    )
    return {
        ApiError: _api_error,
        HTTPException: _http_error,
        CommitFailed: _store_failed,
        sqlite3.OperationalError: _database_error,
        **dict.fromkeys(unavailable, _actor_unavailable),
        Exception: _unexpected,
    }
