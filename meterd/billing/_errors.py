"""Billing errors, each with the API error code and HTTP status it maps to."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BillingError", "Conflict", "InvalidRequest", "NotFound"]


class BillingError(Exception):
    """Base of the errors a billing request can get; ``str(error)`` says what and why."""

    code: ClassVar[str] = "billing_error"
    status: ClassVar[int] = 500


class InvalidRequest(BillingError, ValueError):
    """A parameter is wrong (the message names it)."""

    code = "bad_request"
    status = 400


class NotFound(BillingError, LookupError):
    """An unknown meter, event, line or period."""

    code = "not_found"
    status = 404


class Conflict(BillingError):
    """The request contradicts what is recorded (a second void, closing a closed period)."""

    code = "conflict"
    status = 409
