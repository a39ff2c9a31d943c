"""``meterd bench cluster`` on a tiny load: every run of the one command gives its figures
(embedded, 1 node, 2 nodes, half load, takeover). Figures, never thresholds. It runs as a
process of its own (the benchmark configures logging for its whole process)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_cluster_bench_runs_every_part_on_a_tiny_load() -> None:
    argv = ["--batches", "8", "--in-flight", "4", "--servers", "1", "--lease-ttl", "2s"]
    done = subprocess.run(
        [sys.executable, "-m", "meterd", "bench", "cluster", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert set(found["results"]) == {"embedded", "1 node", "2 nodes", "half load"}
    for figures in found["results"].values():
        assert figures["events_per_s"] > 0
        assert figures["cpu_us_per_event"] > 0
    half = found["results"]["half load"]
    assert half["publish_p50_ms"] <= half["publish_p99_ms"]
    assert half["verdict_p50_ms"] <= half["verdict_p99_ms"]
    assert found["two_over_one"] > 0
    assert found["takeover_s"] > 0
