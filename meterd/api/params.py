"""Query parameters: each read with the rule it must follow, or a 400 naming it."""

from __future__ import annotations

import re
from enum import Enum
from typing import Final, TypeVar

from starlette.datastructures import QueryParams

from meterd.model import MAX_MS, MAX_MS_TEXT, Window

from .errors import bad_parameter

E = TypeVar("E", bound=Enum)

_INTEGER: Final = re.compile(r"-?[0-9]{1,20}")


class Query:
    """The query string of one request."""

    def __init__(self, params: QueryParams) -> None:
        self.params = params

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise bad_parameter(name, "is required")
            return None
        if not value:
            raise bad_parameter(name, "must not be empty")
        return value

    def required(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int:
        """An integer in ``[low, high]``; required unless ``default`` is given."""
        text = self.text(name, required=default is None)
        if text is None:
            assert default is not None
            return default
        value = _integer(name, text)
        if not low <= value <= high:
            raise bad_parameter(name, f"must be between {low} and {high}, not {value}")
        return value

    def millis(self, name: str, *, default: int | None = None) -> int:
        """A time in integer Unix milliseconds, ``0..MAX_MS`` (:data:`meterd.model.MAX_MS`);
        required unless ``default`` is given."""
        text = self.text(name, required=default is None)
        if text is None:
            assert default is not None
            return default
        return check_millis(name, _integer(name, text))

    def span(self) -> tuple[int, int]:
        """Optional ``from`` (default 0) and ``to`` (default ``MAX_MS``), ``from <= to``."""
        from_ms = self.millis("from", default=0)
        to_ms = self.millis("to", default=MAX_MS)
        check_range(from_ms, to_ms)
        return from_ms, to_ms

    def choice(self, name: str, kind: type[E], default: E) -> E:
        text = self.text(name)
        if text is None:
            return default
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise bad_parameter(name, f"must be one of {allowed}, not {text!r:.40}") from None


def _integer(name: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise bad_parameter(name, f"must be an integer, not {text!r:.40}")
    return int(text)


def check_known(params: QueryParams, allowed: frozenset[str]) -> None:
    """400 for a parameter the route does not take (a typo would otherwise be ignored)."""
    for name in params:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise bad_parameter(name, f"is not a parameter of this route (known: {known})")


def check_millis(name: str, value: int) -> int:
    """``value`` if it is a time the API takes (``0..MAX_MS``), else a 400 naming ``name``."""
    if not 0 <= value <= MAX_MS:
        raise bad_parameter(
            name,
            f"must be Unix milliseconds between 0 and {MAX_MS} ({MAX_MS_TEXT}), not {value}",
        )
    return value


def check_range(from_ms: int, to_ms: int) -> None:
    if from_ms > to_ms:
        raise bad_parameter("from", f"must not be after 'to' ({from_ms} > {to_ms})")


def usage_query(params: QueryParams) -> tuple[str, int, int, Window, str | None]:
    """``(meter, from, to, window, group_by)`` of a usage request (``/usage``,
    ``/usage/billed``): ``meter``, ``from``, ``to`` required, ``window`` default hour."""
    query = Query(params)
    meter_name = query.required("meter")
    from_ms = query.millis("from")
    to_ms = query.millis("to")
    window = query.choice("window", Window, Window.HOUR)
    group_by = query.text("group_by")
    check_range(from_ms, to_ms)
    return meter_name, from_ms, to_ms, window, group_by
