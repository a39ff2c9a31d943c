"""Billing's part of the config: ``[billing]`` and the price book (``[[prices]]``).

Billing owns these keys; :mod:`meterd.config` composes them into the file. Each key is
declared once below; :func:`check_prices` turns the ``[[prices]]`` array into
:class:`PriceRule`\\ s, checking the rules that span entries and meters (see ``_prices.py``
for why they are refused: each would make the choice of a rule ambiguous).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

from meterd.model import Aggregation, Meter
from meterd.schema import Check, Invalid, check_fields, dotted, got, key, show, suggest

from ._prices import MAX_PLACES, PriceRule, QuantityRounding, RoundingMode

__all__ = ["BillingConfig", "PriceEntry", "check_prices"]

_DECIMAL: Final = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")


def decimal_text(value: object) -> Decimal:
    """A decimal written as a string (exact), ``>= 0``."""
    expected = 'expected a decimal string like "0.05"'
    if isinstance(value, float):
        raise Invalid(f"{expected} (a TOML float is inexact), {got(value)}")
    if not isinstance(value, str):
        raise Invalid(f"{expected}, {got(value)}")
    if not _DECIMAL.fullmatch(value):
        raise Invalid(f"{expected} (digits, optionally a '.' and more digits), got {show(value)}")
    return Decimal(value)


def positive_decimal_text(value: object) -> Decimal:
    number = decimal_text(value)
    if number == 0:
        raise Invalid(f"must be greater than 0, got {show(value)}")
    return number


def effective_date(value: object) -> date:
    """A TOML date or ``"YYYY-MM-DD"``; not a datetime (prices change at 00:00 UTC)."""
    expected = "expected a date like 2026-11-01 (00:00 UTC)"
    if isinstance(value, datetime):
        raise Invalid(f"{expected}, without a time: prices change at 00:00 UTC, {got(value)}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                return date.fromisoformat(value)
        except ValueError:
            pass
        raise Invalid(f"{expected}, got {show(value)}")
    raise Invalid(f"{expected}, {got(value)}")


def one_match(value: object) -> tuple[str, str]:
    """``{ size = "performance-l" }``: one dimension and its value."""
    example = '{ size = "performance-l" }'
    if not isinstance(value, dict) or len(value) != 1:
        what = got(value) if not isinstance(value, dict) else f"got {len(value)} keys"
        raise Invalid(f"expected one dimension and its value, like {example}, {what}")
    [(name, item)] = value.items()
    if not isinstance(item, str) or not item:
        raise Invalid(
            f"expected a string, {got(item)}" if item != "" else "must not be empty", name
        )
    return name, item


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """``[billing]``: ``path`` None means ``billing.sqlite3`` beside the store."""

    path: Annotated[
        Path | None,
        key("The billing database (adjustments, closed periods); default: beside the store."),
    ] = None
    currency: Annotated[
        str,
        key(
            "ISO 4217 code of every amount.",
            pattern="[A-Z]{3}",
            invalid="an ISO 4217 code like 'USD'",
        ),
    ] = "USD"
    amount_places: Annotated[
        int, key("Amounts are rounded to this many decimal places (half-even).", ge=0, le=8)
    ] = 2


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One ``[[prices]]`` entry as written; :func:`check_prices` makes it a PriceRule."""

    meter: Annotated[str, key("The meter this rule prices.")]
    unit_price: Annotated[
        Decimal,
        key(
            "Price of one unit of the meter's quantity.",
            parse=decimal_text,
            kind='decimal string (`"0.05"`)',
            missing='the price of one unit, like "0.05"',
        ),
    ]
    effective_from: Annotated[
        date,
        key(
            "First day the price applies, from 00:00 UTC.",
            parse=effective_date,
            kind='date (`2026-11-01` or `"2026-11-01"`)',
            missing="the first day the price applies, like 2026-11-01",
        ),
    ]
    name: (
        Annotated[
            str,
            key(
                "The rule's name, shown in invoices and explanations instead of `prices[N]`"
                " (unique in the price book).",
                max_length=100,
                pattern=r"\S(.*\S)?",
                invalid="a name of 1 to 100 characters without leading or trailing blanks",
            ),
        ]
        | None
    ) = None
    match: Annotated[
        tuple[str, str] | None,
        key(
            "Price only lines whose dimension has this value; beats the meter's rules without"
            " a match while in effect.",
            parse=one_match,
            kind='one dimension and its value (`{ size = "performance-l" }`)',
        ),
    ] = None
    round_places: (
        Annotated[
            int,
            key(
                "Round each line's quantity to this many decimal places (0: whole units).",
                kind="integer number of decimal places",
                ge=0,
                le=MAX_PLACES,
            ),
        ]
        | None
    ) = None
    rounding: Annotated[RoundingMode, key("How round_places rounds (default ceiling).")] | None = (
        None
    )
    monthly_cap: (
        Annotated[
            Decimal,
            key(
                "Cap on one line's quantity per month (summed meters only).",
                parse=positive_decimal_text,
                kind="decimal string",
            ),
        ]
        | None
    ) = None
    daily_cap: (
        Annotated[
            Decimal,
            key(
                "Cap per line of this times the month's days (summed meters only; not with"
                " monthly_cap).",
                parse=positive_decimal_text,
                kind="decimal string",
            ),
        ]
        | None
    ) = None


def check_prices(
    check: Check, value: object, meters: Mapping[str, Meter], declared: set[str] | None
) -> tuple[PriceRule, ...]:
    """The ``[[prices]]`` array as rules. ``meters``: the valid meters; ``declared``: every
    meter name the file gives (None when some entry has none), so that a price for a
    declared but invalid meter is not reported twice."""
    rules: list[PriceRule] = []
    seen: dict[tuple[str, tuple[str, str] | None, date], str] = {}
    match_dimension: dict[str, tuple[str, str]] = {}  # meter -> (dimension, prefix)
    named: dict[str, str] = {}  # rule name -> the entry that has it
    for index, (prefix, table) in enumerate(check.array_of_tables("prices", value)):
        values, ok = check_fields(PriceEntry, table, prefix, check)
        meter = _meter(check, prefix, values, meters, declared)
        ok = _rules(check, prefix, values, meter, match_dimension) and ok
        if not ok or meter is None:
            continue
        name = values.get("name")
        if name is not None and named.setdefault(name, prefix) != prefix:
            check.problem(f"{prefix}.name", f"{named[name]} already has the name {name!r}")
            continue
        match, when = values["match"], values["effective_from"]
        same = seen.setdefault((meter.name, match, when), prefix)
        if same != prefix:
            which = "" if match is None else f" where {match[0]} = {match[1]!r}"
            check.problem(
                f"{prefix}.effective_from",
                f"{same} already prices {meter.name!r}{which} from {when}",
            )
            continue
        places, mode = values["round_places"], values["rounding"]
        rounding = (
            None if places is None else QuantityRounding(places, mode or RoundingMode.CEILING)
        )
        rules.append(
            PriceRule(
                meter.name,
                values["unit_price"],
                when,
                match,
                rounding,
                values["monthly_cap"],
                values["daily_cap"],
                index,
                name,
            )
        )
    return tuple(rules)


def _meter(
    check: Check,
    prefix: str,
    values: Mapping[str, Any],
    meters: Mapping[str, Meter],
    declared: set[str] | None,
) -> Meter | None:
    name = values.get("meter")
    if name is None or name in meters:
        return None if name is None else meters[name]
    if declared is None or name not in declared:  # a declared but invalid meter: said already
        check.problem(
            f"{prefix}.meter", f"{name!r} is not a configured meter{suggest(name, sorted(meters))}"
        )
    return None


def _rules(
    check: Check,
    prefix: str,
    values: Mapping[str, Any],
    meter: Meter | None,
    match_dimension: dict[str, tuple[str, str]],
) -> bool:
    """The rules between an entry's keys and its meter; False when one is broken."""
    ok = True
    match = values.get("match")
    if meter is not None and match is not None:
        name = match[0]
        if name not in meter.dimensions:
            dims = ", ".join(meter.dimensions) or "none"
            check.problem(
                dotted(f"{prefix}.match", name),
                f"not a dimension of meter {meter.name!r} (dimensions: {dims})"
                + suggest(name, meter.dimensions),
            )
            ok = False
        else:
            other = match_dimension.setdefault(meter.name, (name, prefix))
            if other[0] != name:
                check.problem(
                    f"{prefix}.match",
                    f"{other[1]} matches meter {meter.name!r} on {other[0]!r}; the matches"
                    " of one meter must use one dimension (or a line could match two)",
                )
                ok = False
    if values.get("rounding") is not None and values.get("round_places", 0) is None:
        check.problem(f"{prefix}.rounding", "needs round_places (0 rounds to whole units)")
        ok = False
    caps = [name for name in ("monthly_cap", "daily_cap") if values.get(name) is not None]
    if len(caps) == 2:
        check.problem(f"{prefix}.daily_cap", "give either monthly_cap or daily_cap, not both")
        ok = False
    elif (
        caps
        and meter is not None
        and meter.aggregation
        not in (
            Aggregation.SUM,
            Aggregation.COUNT,
        )
    ):
        check.problem(
            f"{prefix}.{caps[0]}",
            f"caps apply to summed quantities; meter {meter.name!r} is {meter.aggregation.value}",
        )
        ok = False
    return ok
