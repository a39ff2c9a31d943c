"""What ingest observes per acknowledged batch, kept as plain numbers (no metric calls).

:meth:`AckObserver.acked` is called once per ack sent (not per event): it adds the batch's
counts to its producer's :class:`ProducerCounts`, its rejected events to their code's count
and its ack latency (the batch read to its ack sent) to a fixed-bucket histogram. ``/metrics``
reads them at scrape time (``meterd_events_rejected_total{code}``, ... : docs/api.md), and
the console computes rates and percentiles from two readings.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

ACK_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds, seconds, of the ack-latency histogram (Prometheus' ``le``; +Inf beyond)."""


class Coded(Protocol):
    @property
    def code(self) -> str: ...


@dataclass(slots=True)
class ProducerCounts:
    """One producer's acknowledged batches and their events since start."""

    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(slots=True)
class LatencyHistogram:
    """Counts per bucket of :data:`ACK_LATENCY_BUCKETS` (the last one is +Inf), and the sum."""

    bounds: Sequence[float] = ACK_LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(ACK_LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` for each bound and ``+Inf`` (Prometheus)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float, since: Sequence[int] | None = None) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` of the observations (since
        the counts ``since``, an earlier copy of :attr:`counts`); None without any, +inf
        past the last bound."""
        counts = self.counts
        if since is not None:
            counts = [now - then for now, then in zip(self.counts, since, strict=True)]
        n = sum(counts)
        if n == 0:
            return None
        rank = q * n
        running = 0
        for index, count in enumerate(counts):
            running += count
            if running >= rank and count:
                return self.bounds[index] if index < len(self.bounds) else float("inf")
        return float("inf")


@dataclass(slots=True)
class AckObserver:
    """Per-producer counts, rejected events by code, and ack latency (see the module doc)."""

    producers: dict[str, ProducerCounts] = field(default_factory=dict)
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    ack_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def acked(
        self,
        producer: str,
        accepted: int,
        duplicates: int,
        rejected: Iterable[Coded],
        seconds: float,
    ) -> None:
        counts = self.producers.get(producer)
        if counts is None:
            counts = self.producers[producer] = ProducerCounts()
        counts.batches += 1
        counts.accepted += accepted
        counts.duplicates += duplicates
        for rejection in rejected:
            counts.rejected += 1
            self.rejected_by_code[rejection.code] += 1
        self.ack_latency.observe(seconds)


__all__ = ["ACK_LATENCY_BUCKETS", "AckObserver", "LatencyHistogram", "ProducerCounts"]
