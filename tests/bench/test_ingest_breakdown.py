"""The ingest bench's breakdown of an ack's time, read from a gateway's /metrics: quantiles
from histogram buckets, every process summed once, each process's collector pauses."""

from __future__ import annotations

import pytest

from meterd.api.gateway import merge_metrics
from meterd.bench.ingest import breakdown, bucket_quantile, gc_pauses, histogram


def _exposition(slices: list[float], owner_slices: list[float], pauses: list[float]) -> str:
    """A gateway's /metrics as it merges its own text and one owner's (two shards)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from meterd.api.metrics import Metrics, gateway_slice_histogram, owner_slice_histogram

    gateway = Metrics()
    trips = gateway_slice_histogram(gateway.registry).labels("owner-0")
    for seconds in slices:
        trips.observe(seconds)
    if pauses:
        gateway.observe_gc_pause(0, 0.002)
    shards: dict[int, tuple[int, str]] = {}
    for shard in (0, 1):
        registry = CollectorRegistry()
        cell = owner_slice_histogram(registry)
        cell_metrics = Metrics()
        for seconds in owner_slices if shard == 0 else []:
            cell.observe(seconds)
        for seconds in pauses:  # the process's pauses, in every cell
            cell_metrics.observe_gc_pause(1, seconds)
        text = generate_latest(registry).decode() + generate_latest(cell_metrics.registry).decode()
        shards[shard] = (0, text)
    own = generate_latest(gateway.registry).decode()
    return merge_metrics(own, shards, [0, 1], {}).decode()


def test_a_quantile_is_interpolated_in_its_bucket() -> None:
    start = {0.01: 0.0, 0.02: 0.0, 0.05: 0.0, float("inf"): 0.0}
    end = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, float("inf"): 100.0}
    assert bucket_quantile(start, end, 0.5) == pytest.approx(0.01)
    assert bucket_quantile(start, end, 0.7) == pytest.approx(0.015)
    assert bucket_quantile(start, end, 0.99) == pytest.approx(0.047)
    # Only what was observed between the two readings counts.
    assert bucket_quantile(end, {k: v + 10 for k, v in end.items()}, 0.5) == pytest.approx(0.005)
    assert bucket_quantile(end, end, 0.5) is None


def test_the_breakdown_counts_each_process_once_and_names_each_ones_pauses() -> None:
    start = _exposition([], [], [])
    end = _exposition([0.004] * 98 + [0.09, 0.12], [0.003] * 100, [0.025, 0.025])
    # The merged text has every series twice (the total and per process): read once.
    assert sum(histogram(end, "meterd_gateway_slice_seconds").values()) > 0
    assert histogram(end, "meterd_gateway_slice_seconds")[float("inf")] == 100.0
    assert histogram(end, "meterd_owner_slice_seconds", "owner-0")[float("inf")] == 100.0
    figures = breakdown(start, end)
    assert 2.5 < figures["slice round trip p50, ms"] <= 5.0
    assert 75.0 < figures["slice round trip p99, ms"] <= 100.0
    assert figures["slice in the owner p99, ms"] <= 5.0
    assert figures["GC pauses, ms: owner-0"] == pytest.approx(50.0)  # once, not per cell
    assert figures["GC pauses, ms: gateway"] == pytest.approx(2.0)
    assert figures["GC gen 1, ms: owner-0"] == pytest.approx(50.0)  # middle collections
    assert figures["GC gen 1, collections: owner-0"] == 2
    assert figures["GC gen 0, collections: gateway"] == 1
    seconds, collections = gc_pauses(text=end) or (0.0, 0)
    assert seconds == pytest.approx(0.052)
    assert collections == 3
