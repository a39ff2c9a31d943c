"""``GET /metrics``: Prometheus text, read from the daemon's own counters at scrape time.

Nothing is counted twice for Prometheus: :class:`DaemonCollector` reads the plain ints the
ingest server (:class:`~meterd.ingest.server.IngestStats`), the store writer
(:class:`~meterd.store.WriterStats`) and the supervisors (``restart_counts``) keep anyway, so
the hot path has no metric calls. The exceptions are checkpoint latency, a histogram fed
by the writer's ``on_checkpoint`` hook (one observation per checkpoint, not per event), store
commit latency, fed by its ``on_commit`` hook (one per group commit), and the quarantine's
release and discard counts (one call per operator decision).

Each :class:`Metrics` has its own registry (several daemons in one test process do not mix).
Counters restart from zero with the process; a supervisor rebuilt by its parent (``accounts``)
starts its restart counts over, which Prometheus' ``rate`` treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import supervisors as sv
from meterd.ingest.observe import LatencyHistogram
from meterd.memory import frozen_objects

if TYPE_CHECKING:
    from meterd.accounts.service import Accounts
    from meterd.ingest.server import IngestServer
    from meterd.store import Store

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
CHECKPOINT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
GC_PAUSE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
COMMIT_BUCKETS: Final = (
    0.00025,
    0.0005,
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
)
"""Upper bounds, seconds, of the store commit-latency histogram (a commit with fsync takes
a few hundred microseconds on an idle disk; +Inf beyond)."""
SLICE_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds, seconds, of the slice histograms of a daemon with owners
(``meterd_gateway_slice_seconds``, ``meterd_owner_slice_seconds``): fine around the
half-load ack goal (50 ms), up to ``[partitions] slice_timeout`` (5 s)."""


def gateway_slice_histogram(registry: CollectorRegistry) -> Histogram:
    """``meterd_gateway_slice_seconds{link}``: a gateway's slices, from the link's send to
    the owner's verdicts (docs/api.md)."""
    return Histogram(
        "meterd_gateway_slice_seconds",
        "In a gateway: from a batch's message queued on an owner's link to that owner's"
        " verdicts read (the link's queue, the socket both ways, the owner's work), by link.",
        labelnames=("link",),
        buckets=SLICE_BUCKETS,
        registry=registry,
    )


def owner_slice_histogram(registry: CollectorRegistry) -> Histogram:
    """``meterd_owner_slice_seconds``: an owner's slices messages, from their read to their
    verdicts queued for the gateway (docs/api.md)."""
    return Histogram(
        "meterd_owner_slice_seconds",
        "In an owner: from a batch's slices message read off the gateway's channel to its"
        " verdicts queued back (the shard budgets' wait, the commit round, the actors).",
        buckets=SLICE_BUCKETS,
        registry=registry,
    )


@dataclass(slots=True)
class QuarantineCounts:
    """Quarantined events settled by operators since start (the routes add to them)."""

    released: int = 0
    discarded: int = 0


def commit_histogram() -> LatencyHistogram:
    return LatencyHistogram(COMMIT_BUCKETS, [0] * (len(COMMIT_BUCKETS) + 1))


def supervisors_by_path(root: sv.SupervisorCore) -> Iterator[tuple[str, sv.SupervisorCore]]:
    """Every supervisor of the tree with its path (``root/accounts/meters``).

    Only children that are supervisors are descended into; a dynamic supervisor's actors
    are still looked at once each (linear in the live actors).
    """
    stack = [(root.name, root)]
    while stack:
        path, sup = stack.pop()
        yield path, sup
        for child in sup.iter_children():
            ref = child.ref
            if isinstance(ref, sv.SupervisorCore):
                stack.append((f"{path}/{child.name}", ref))


class DaemonCollector(Collector):
    """Reads the daemon's counters when Prometheus scrapes (see the module doc)."""

    def __init__(
        self,
        root: sv.SupervisorCore,
        accounts: Accounts | None,
        store: Store | None,
        ingest: IngestServer,
        commit_latency: LatencyHistogram | None = None,
        quarantine: QuarantineCounts | None = None,
    ) -> None:
        """``accounts`` and ``store`` are None in a gateway (their series come from the
        owners' cells); ``commit_latency``: the store's commits (fed by its writer);
        ``quarantine``: the operators' decisions (counted by the quarantine routes)."""
        self.root = root
        self.accounts = accounts
        self.store = store
        self.ingest = ingest
        self.commit_latency = commit_histogram() if commit_latency is None else commit_latency
        self.decisions = QuarantineCounts() if quarantine is None else quarantine
        self.quarantined = 0  # refreshed from the store by the handler before each scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        if self.store is not None:
            yield from self._store(self.store)
        yield from self._tree()
        yield from self._memory()

    def _memory(self) -> Iterator[Metric]:
        # Growth between two full collections (every 10 minutes, meterd/memory.py) that does
        # not fall back after one is garbage in cycles that freezing kept: worth a look.
        yield GaugeMetricFamily(
            "meterd_gc_frozen_objects",
            "Objects in the collector's permanent generation (frozen: never walked until the"
            " next full collection).",
            frozen_objects(),
        )

    def _ingest(self) -> Iterator[Metric]:
        stats = self.ingest.stats
        for name, doc, value in (
            ("events_accepted", "Events accepted (durable and counted).", stats.accepted),
            ("events_duplicate", "Events acknowledged as duplicates.", stats.duplicates),
            ("acks", "Batch acks sent to producers.", stats.acks),
            ("batches", "Batches read from producers.", stats.batches),
            ("connections", "Producer websockets opened (authenticated).", stats.connections),
            ("handshakes_refused", "Producer handshakes refused (401/404/503).", stats.refused),
            ("connection_failures", "Connections ended by an unexpected error.", stats.failed),
        ):
            yield CounterMetricFamily(f"meterd_{name}", doc, value=value)
        observed = stats.observed
        rejected = CounterMetricFamily(
            "meterd_events_rejected",
            "Events rejected (validation or id conflict), by the code of their ack.",
            labels=["code"],
        )
        for code, count in sorted(observed.rejected_by_code.items()):
            rejected.add_metric([code], count)
        yield rejected
        latency = observed.ack_latency
        yield HistogramMetricFamily(
            "meterd_ack_latency_seconds",
            "From a batch read to its ack sent (validation, the store's commit, waiting for"
            " the acks before it).",
            buckets=latency.cumulative(),
            sum_value=latency.total,
        )
        by_producer = CounterMetricFamily(
            "meterd_producer_events",
            "Events in the acks sent to each producer, by outcome (accepted, duplicate, rejected).",
            labels=["producer", "outcome"],
        )
        producer_batches = CounterMetricFamily(
            "meterd_producer_acks", "Batch acks sent to each producer.", labels=["producer"]
        )
        for name, counts in sorted(observed.producers.items()):
            by_producer.add_metric([name, "accepted"], counts.accepted)
            by_producer.add_metric([name, "duplicate"], counts.duplicates)
            by_producer.add_metric([name, "rejected"], counts.rejected)
            producer_batches.add_metric([name], counts.batches)
        yield by_producer
        yield producer_batches
        open_by_producer = GaugeMetricFamily(
            "meterd_producer_connections_open",
            "Producer websockets open now, per producer.",
            labels=["producer"],
        )
        for name, count in sorted(self.ingest.connections_by_producer.items()):
            open_by_producer.add_metric([name], count)
        yield open_by_producer
        faults = CounterMetricFamily(
            "meterd_faults", "Error frames sent to producers, by code.", labels=["code"]
        )
        for code, count in sorted(stats.faults.items()):
            faults.add_metric([code], count)
        yield faults
        yield GaugeMetricFamily(
            "meterd_connections_open",
            "Producer websockets open now.",
            value=self.ingest.connection_count,
        )
        yield GaugeMetricFamily(
            "meterd_ingest_ack_bytes",
            "Bytes of acks held for producers now (batches in flight counted at their worst"
            " case, prepared acks at their size; bounded by ingest.max_ack_bytes).",
            value=self.ingest.ack_bytes.used,
        )

    def _store(self, store: Store) -> Iterator[Metric]:
        writer = store.writer
        stats = writer.stats
        yield CounterMetricFamily(
            "meterd_store_commits", "Store group transactions committed.", value=stats.commits
        )
        yield CounterMetricFamily(
            "meterd_store_failed_commits",
            "Store group transactions that failed.",
            value=stats.failed_commits,
        )
        yield GaugeMetricFamily(
            "meterd_store_pending", "Store operations queued or being written.", writer.pending
        )
        commits = self.commit_latency
        yield HistogramMetricFamily(
            "meterd_store_commit_seconds",
            "From a group's write handed to the store's thread to its commit (the queue"
            " before it not counted): one observation per committed group.",
            buckets=commits.cumulative(),
            sum_value=commits.total,
        )
        yield CounterMetricFamily(
            "meterd_store_failed_passes",
            "Journal-index passes that failed (their groups committed without them).",
            value=stats.failed_passes,
        )
        yield GaugeMetricFamily(
            "meterd_store_journal_tail_batches",
            "Journal batches whose index and dedupe rows are held in memory, not yet passed.",
            writer.journal_tail.size,
        )
        if writer.wal is not None:
            yield CounterMetricFamily(
                "meterd_store_wal_checkpoints",
                "Checkpoints of the write-ahead log run off the commit path.",
                value=writer.wal.stats.checkpoints,
            )
            yield CounterMetricFamily(
                "meterd_store_wal_failed_checkpoints",
                "Checkpoints of the write-ahead log that failed (retried; commits unaffected).",
                value=writer.wal.stats.failures,
            )
        yield GaugeMetricFamily(
            "meterd_quarantined_events", "Events in quarantine (poison).", self.quarantined
        )
        yield CounterMetricFamily(
            "meterd_quarantine_released",
            "Quarantined events released (re-applied) by an operator (API, CLI, console).",
            value=self.decisions.released,
        )
        yield CounterMetricFamily(
            "meterd_quarantine_discarded",
            "Quarantined events discarded for good by an operator (API, CLI, console).",
            value=self.decisions.discarded,
        )
        waiting = GaugeMetricFamily(
            "meterd_store_reads_waiting",
            "Store reads waiting for a reader thread, by lane (recovery: actors waking;"
            " monitor: this endpoint's; default: the API's).",
            labels=["lane"],
        )
        for lane, count in store.reader.waiting().items():
            waiting.add_metric([lane], count)
        yield waiting

    def _tree(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "meterd_actor_restarts",
            "Child restarts made by each supervisor, by cause: exit (a crash or kill,"
            " counted toward the restart intensity) or operator (POST .../restart).",
            labels=["supervisor", "cause"],
        )
        children = GaugeMetricFamily(
            "meterd_supervisor_children",
            "Children of each supervisor now.",
            labels=["supervisor"],
        )
        for path, sup in supervisors_by_path(self.root):
            for cause in ("exit", "operator"):
                restarts.add_metric([path, cause], sup.restart_counts[cause])
            children.add_metric([path], sup.count_children().specs)
        yield restarts
        yield children
        if self.accounts is None:
            return
        yield GaugeMetricFamily(
            "meterd_live_actors",
            "Meter actors awake now (one per awake account).",
            value=len(self.accounts.supervisor),
        )


class Metrics:
    """The registry of one daemon's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.checkpoint_seconds = Histogram(
            "meterd_checkpoint_seconds",
            "Time to write one account checkpoint, from the request to its commit.",
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        gc_pause_seconds = Histogram(
            "meterd_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (the whole process stops), by the"
            " generation collected.",
            labelnames=("generation",),
            buckets=GC_PAUSE_BUCKETS,
            registry=self.registry,
        )
        self._gc_pauses = [gc_pause_seconds.labels(str(generation)) for generation in (0, 1, 2)]
        # Store commit latency: plain counts (the console charts their differences too).
        self.commit_latency = commit_histogram()
        # Quarantined events settled by operators (the quarantine routes add to them).
        self.quarantine = QuarantineCounts()
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds, ... (Linux /proc)
        ProcessCollector(registry=self.registry)
        self.collector: DaemonCollector | None = None

    def watch(
        self,
        root: sv.SupervisorCore,
        accounts: Accounts | None,
        store: Store | None,
        ingest: IngestServer,
    ) -> None:
        """Start reading this daemon's counters (and observing its checkpoints); a gateway
        has no ``accounts`` nor ``store`` of its own."""
        self.collector = DaemonCollector(
            root, accounts, store, ingest, self.commit_latency, self.quarantine
        )
        self.registry.register(self.collector)
        if store is not None:
            store.writer.on_checkpoint = self.checkpoint_seconds.observe
            store.writer.on_commit = self.commit_latency.observe

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        """One collection's pause (:class:`meterd.memory.GcPauses` calls this)."""
        self._gc_pauses[generation].observe(seconds)

    async def render(self) -> bytes:
        """The scrape body; the quarantine count is read from the store first."""
        if self.collector is not None and self.collector.store is not None:
            self.collector.quarantined = await self.collector.store.reader.quarantined_count()
        return generate_latest(self.registry)
