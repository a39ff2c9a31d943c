"""Alert figures for ``/metrics`` (read at scrape time from the delivery service's own
counters: nothing on the delivery path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._delivery import DeliveryService


class DeliveryCollector(Collector):
    def __init__(self, service: DeliveryService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        by_status = GaugeMetricFamily(
            "meterd_alert_deliveries",
            "Deliveries of alert crossings by status (pending, delivered, failed).",
            labels=("status",),
        )
        by_status.add_metric(["pending"], service.pending)
        for status, count in service.settled.items():
            by_status.add_metric([status], count)
        yield by_status
        oldest = service.oldest_undelivered_ms()
        yield GaugeMetricFamily(
            "meterd_alert_oldest_undelivered_seconds",
            "Age of the oldest crossing not delivered yet (0 when none waits).",
            value=0 if oldest is None else oldest / 1000,
        )
        yield CounterMetricFamily(
            "meterd_alert_delivery_attempts",
            "Delivery attempts (POSTs) since the daemon started.",
            value=service.attempts,
        )
        yield CounterMetricFamily(
            "meterd_alert_crossings",
            "Crossings made durable (written to the outbox) since the daemon started.",
            value=service.book.durable_crossings,
        )
