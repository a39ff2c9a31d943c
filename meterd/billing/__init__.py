"""Billing support: the price book, rating usage into invoices, audited corrections,
closed periods and restatements, and explanations down to the events.

See docs/billing.md for the rules. The modules behind this curated API:

* ``_period`` — :class:`Period`, calendar months in UTC;
* ``_prices`` — :class:`PriceBook` and the ``[[prices]]`` rules of the config;
* ``_config`` — billing's keys of the config file: ``[billing]`` and ``[[prices]]``, declared
  and checked here, composed by :mod:`meterd.config`;
* ``_rating`` — :func:`rate`: pure, exact rating of one account's month into an :class:`Invoice`;
* ``_corrections`` — :class:`Adjustment` and :class:`Void`, append-only, and the requests that
  make them (:class:`AdjustmentRequest`, :class:`VoidRequest`);
* ``_restate`` — :class:`Restatement`: how a closed period's figures changed, and why;
* ``_explain`` — :class:`Explanation`: a figure down to its windows and events;
* ``_db`` — :class:`BillingDB`, the billing database (its own SQLite file);
* ``_service`` — :class:`Billing`, what the API and the CLI call;
* ``_render`` — explanations as text (``meterd explain``);
* ``_graphql`` — :class:`BillingGraphQL`, GraphQL over it (run on a worker thread).
"""

from typing import TYPE_CHECKING, Any

from ._config import BillingConfig, PriceEntry, check_prices
from ._corrections import (
    ADDITIVE,
    KEY_MAX,
    KEY_PATTERN,
    Adjustment,
    AdjustmentKind,
    AdjustmentRequest,
    CorrectionRequest,
    Void,
    VoidRequest,
    new_key,
)
from ._errors import BillingError, Conflict, InvalidRequest, NotFound, invalid
from ._explain import ExplainedEvent, Explanation, WindowFigure, adjustment_json, void_json
from ._json import Slices, encode_json, loads_array
from ._period import Period, date_ms
from ._prices import PriceBook, PriceRule, QuantityRounding, RoundingMode
from ._rating import Cell, Invoice, InvoiceLine, Unpriced, merge_cells, rate, round_amount
from ._render import (
    format_ms,
    largest_lines,
    render_explanation,
    render_invoice,
    render_summary,
)
from ._restate import LineChange, Restatement, compare_lines

if TYPE_CHECKING:
    from ._db import BillingDB, Closure
    from ._graphql import BillingGraphQL
    from ._service import Billing, InvoiceView

# The service, its database and GraphQL pull in Trio, the accounts layer and Ariadne: they are
# imported on first use, so loading the config (which needs the price book types) stays light.
_LAZY = {
    "Billing": "._service",
    "InvoiceView": "._service",
    "BillingDB": "._db",
    "Closure": "._db",
    "BillingGraphQL": "._graphql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ADDITIVE",
    "Adjustment",
    "AdjustmentKind",
    "AdjustmentRequest",
    "Billing",
    "BillingConfig",
    "BillingDB",
    "BillingError",
    "BillingGraphQL",
    "Cell",
    "Closure",
    "Conflict",
    "CorrectionRequest",
    "ExplainedEvent",
    "Explanation",
    "InvalidRequest",
    "Invoice",
    "InvoiceLine",
    "InvoiceView",
    "LineChange",
    "KEY_MAX",
    "KEY_PATTERN",
    "NotFound",
    "Period",
    "PriceBook",
    "PriceEntry",
    "PriceRule",
    "QuantityRounding",
    "Restatement",
    "RoundingMode",
    "Slices",
    "Unpriced",
    "Void",
    "VoidRequest",
    "WindowFigure",
    "adjustment_json",
    "check_prices",
    "compare_lines",
    "date_ms",
    "encode_json",
    "format_ms",
    "invalid",
    "loads_array",
    "merge_cells",
    "new_key",
    "rate",
    "largest_lines",
    "render_explanation",
    "render_invoice",
    "render_summary",
    "round_amount",
    "void_json",
]
