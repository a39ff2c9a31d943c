"""Billing errors, each with the HTTP status and a stable ``code`` the API answers with.

``code`` defaults per class and may be refined per error (``unknown_meter``,
``already_closed``, ...); ``parameter`` names the request parameter at fault (400s).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BillingError", "Conflict", "InvalidRequest", "NotFound", "Unavailable", "invalid"]


class BillingError(Exception):
    """Base of the errors a billing request can get; ``str(error)`` says what and why."""

    default_code: ClassVar[str] = "billing_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, code: str | None = None, parameter: str | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        self.parameter = parameter


class InvalidRequest(BillingError, ValueError):
    """A parameter is wrong (``parameter`` names it, the message says why)."""

    default_code = "invalid_parameter"
    status = 400


class NotFound(BillingError, LookupError):
    """An unknown meter, event, line or period."""

    default_code = "not_found"
    status = 404


class Conflict(BillingError):
    """The request contradicts what is recorded (a second void, closing a closed period)."""

    default_code = "conflict"
    status = 409


class Unavailable(BillingError):
    """What the answer depends on cannot be read now (cluster mode: NATS): retry."""

    default_code = "unavailable"
    status = 503


def invalid(parameter: str, why: str) -> InvalidRequest:
    """``parameter: why`` as an :class:`InvalidRequest` naming ``parameter``."""
    return InvalidRequest(f"{parameter}: {why}", parameter=parameter)
