"""``meterd bench cluster`` on a tiny load: every run of the one command gives its figures
(embedded, 1 node, 2 nodes, half load, takeover). Figures, never thresholds."""

from __future__ import annotations

import json

import pytest

from meterd.bench import cluster


def test_the_cluster_bench_runs_every_part_on_a_tiny_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cluster.main(
        ["--batches", "8", "--in-flight", "4", "--servers", "1", "--lease-ttl", "2s", "--json"]
    )
    assert code == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found["results"]) == {"embedded", "1 node", "2 nodes", "half load"}
    for figures in found["results"].values():
        assert figures["events_per_s"] > 0
        assert figures["cpu_us_per_event"] > 0
    half = found["results"]["half load"]
    assert half["publish_p50_ms"] <= half["publish_p99_ms"]
    assert half["verdict_p50_ms"] <= half["verdict_p99_ms"]
    assert found["two_over_one"] > 0
    assert found["takeover_s"] > 0
