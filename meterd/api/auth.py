"""``Authorization: Bearer <admin_token>`` on every ``/v1`` route (protocol.md §3).

The token is compared in constant time (:meth:`meterd.config.ApiConfig.is_admin_token`)
and never logged nor echoed.
"""

from __future__ import annotations

from starlette.requests import Request

from meterd.config import ApiConfig

from .errors import ApiError


def require_admin(request: Request, config: ApiConfig) -> None:
    """Raise a 401 :class:`ApiError` unless the request carries the admin token."""
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <admin token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
    if not config.is_admin_token(token.strip()):
        raise ApiError(401, "unauthorized", "wrong admin token")
