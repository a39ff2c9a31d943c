"""Issue 18 item 4: rejected events by code, the ack-latency histogram, per-producer counts
and the process collector in ``/metrics`` (in-process daemon, real HTTP and websockets);
store commit latency and the quarantine's release and discard counts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import trio

from meterd.api.metrics import COMMIT_BUCKETS
from meterd.client import Producer
from meterd.ingest.observe import ACK_LATENCY_BUCKETS, AckObserver, LatencyHistogram
from meterd.model import Event
from tests.api.test_api import metric
from tests.ingest.test_server import ADMIN_TOKEN, PLATFORM_TOKEN, T0, make_config, running
from tests.store.test_quarantine_release import write_quarantined_store


async def test_metrics_have_rejections_by_code_ack_latency_producers_and_process(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path)) as services:
        url = services.ingest.url
        async with Producer(url, PLATFORM_TOKEN, linger=0.001) as producer:
            base = {"account": "acme", "quantity": "1", "time": T0, "properties": {"size": "S"}}
            await producer.send({**base, "id": "ok-1", "meter": "dyno.seconds"})
            await producer.send({**base, "id": "bad-1", "meter": "no.such.meter"})
            await producer.send({**base, "id": "bad-2", "meter": "no.such.meter"})
            await producer.send({**base, "id": "bad-3", "meter": "dyno.seconds", "quantity": "x"})
            await producer.flush()
        async with httpx.AsyncClient(base_url=services.api.url) as client:
            text = (await client.get("/metrics")).text
    assert metric(text, "meterd_events_rejected_total", code="unknown_meter") == 2
    assert metric(text, "meterd_events_rejected_total", code="invalid_quantity") == 1
    assert metric(text, "meterd_events_accepted_total") == 1
    acks = metric(text, "meterd_acks_total")
    assert acks >= 1
    assert metric(text, "meterd_ack_latency_seconds_count") == acks
    assert metric(text, "meterd_ack_latency_seconds_bucket", le="+Inf") == acks
    assert metric(text, "meterd_ack_latency_seconds_sum") > 0
    events = "meterd_producer_events_total"
    assert metric(text, events, producer="platform", outcome="accepted") == 1
    assert metric(text, events, producer="platform", outcome="rejected") == 3
    assert metric(text, "meterd_producer_acks_total", producer="platform") == acks
    assert metric(text, "process_resident_memory_bytes") > 0
    assert metric(text, "process_cpu_seconds_total") > 0


def test_latency_histogram_buckets_and_quantiles() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.0005, 0.001, 0.003, 0.003, 20.0):
        histogram.observe(seconds)
    cumulative = dict(histogram.cumulative())
    assert cumulative["0.001"] == 2  # le: a bound is inclusive
    assert cumulative["0.005"] == 4
    assert cumulative["+Inf"] == 5
    assert len(cumulative) == len(ACK_LATENCY_BUCKETS) + 1
    assert histogram.quantile(0.5) == 0.005
    assert histogram.quantile(0.99) == float("inf")
    before = list(histogram.counts)
    assert histogram.quantile(0.5, since=before) is None
    histogram.observe(0.2)
    assert histogram.quantile(0.99, since=before) == 0.25


def test_observer_counts_per_producer_and_code() -> None:
    class R:
        def __init__(self, code: str) -> None:
            self.code = code

    observer = AckObserver()
    observer.acked("a", 3, 1, [R("x"), R("y"), R("x")], 0.002)
    observer.acked("b", 1, 0, [], 0.002)
    assert observer.rejected_by_code == {"x": 2, "y": 1}
    assert (observer.producers["a"].accepted, observer.producers["a"].rejected) == (3, 3)
    assert observer.producers["b"].batches == 1


async def test_store_commit_latency_is_a_histogram_and_in_the_consoles_snapshot(
    tmp_path: Path,
) -> None:
    """Every committed group of client operations is one observation of
    ``meterd_store_commit_seconds``; the console's snapshot has the same counts per bucket
    (the ingest page charts their p50 and p99 from two snapshots)."""
    async with running(make_config(tmp_path)) as services:
        async with Producer(services.ingest.url, PLATFORM_TOKEN, linger=0.001) as producer:
            for index in range(30):
                await producer.send(
                    {
                        "id": f"c-{index}",
                        "account": f"acct-{index % 7}",
                        "meter": "dyno.seconds",
                        "quantity": "1",
                        "time": T0,
                        "properties": {"size": "S"},
                    }
                )
                if index % 10 == 9:
                    await producer.flush()  # three batches at least: three commits
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            await services.store.writer.barrier()
            snapshot = (await client.get("/v1/console/ingest")).json()
            text = (await client.get("/metrics")).text
    commits = metric(text, "meterd_store_commits_total")
    assert commits >= 3
    assert snapshot["store_commits"] <= commits  # (the scrape came after: a few more)
    assert metric(text, "meterd_store_commit_seconds_count") == commits
    assert metric(text, "meterd_store_commit_seconds_bucket", le="+Inf") == commits
    assert metric(text, "meterd_store_commit_seconds_sum") > 0
    assert snapshot["commit_latency_bounds"] == list(COMMIT_BUCKETS)
    counts = snapshot["commit_latency_counts"]
    assert len(counts) == len(COMMIT_BUCKETS) + 1
    assert sum(counts) == snapshot["store_commits"]


def test_quarantine_releases_and_discards_are_counted(tmp_path: Path) -> None:
    """``meterd_quarantine_released_total`` / ``_discarded_total``: the events each decision
    settled (a repeated decision settles nothing and counts nothing)."""
    config = make_config(tmp_path)
    properties = (("size", "S"),)
    events = [
        Event(f"q{n}", "acme", "dyno.seconds", Decimal(n + 1), T0, properties) for n in range(4)
    ]
    write_quarantined_store(config.store.path, "acme", events, {"q1", "q2", "q3"}, "boom")

    async def decide() -> str:
        async with running(config) as services:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
                text = (await client.get("/metrics")).text
                assert metric(text, "meterd_quarantine_released_total") == 0
                assert metric(text, "meterd_quarantine_discarded_total") == 0
                who = {"by": "alice", "reason": "meter restored"}
                for body, action in (
                    ({**who, "ids": ["q1", "q2"]}, "release"),
                    ({**who, "ids": ["q1"]}, "release"),  # again: unchanged
                    ({**who, "ids": ["q3"]}, "discard"),
                    ({**who, "ids": ["q3"]}, "discard"),
                ):
                    answer = await client.post(f"/v1/quarantine/acme/{action}", json=body)
                    assert answer.status_code == 200, answer.text
                refused = await client.post(
                    "/v1/quarantine/acme/discard", json={**who, "ids": ["nope"]}
                )
                assert refused.status_code == 404
                return (await client.get("/metrics")).text

    text = trio.run(decide)
    assert metric(text, "meterd_quarantine_released_total") == 2
    assert metric(text, "meterd_quarantine_discarded_total") == 1
