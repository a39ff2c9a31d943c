"""Billing's metrics: restatements recorded, by the kind of their cause.

A collector of its own (``prometheus_client``'s custom-collector interface), registered on
the daemon's registry beside the daemon's collector: it reads :attr:`Billing.restated` at
scrape time, so recording a restatement makes no metric call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._service import Billing

CAUSES: Final = ("correction", "late_events", "price_book", "unexplained")


class BillingCollector(Collector):
    """``meterd_billing_restatements_total{cause}`` from :attr:`Billing.restated`."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    def collect(self) -> Iterator[Metric]:
        restated = CounterMetricFamily(
            "meterd_billing_restatements",
            "Restatements of closed months recorded since the daemon started, by the kind of"
            " their first cause (correction: an adjustment or void; late_events: events"
            " received after the figures were fixed; price_book: a changed price;"
            " unexplained: none of those found).",
            labels=("cause",),
        )
        for cause in CAUSES:
            restated.add_metric([cause], self.billing.restated.get(cause, 0))
        yield restated
