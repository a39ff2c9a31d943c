"""The ``[cluster]`` table of config.toml (protocol.md §5): optional, checked like the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterd.config import ClusterConfig, ConfigError, Duration, load
from tests.config.test_config import text

NATS = '["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]'


def load_with(tmp_path: Path, cluster: str | None) -> ClusterConfig | None:
    path = tmp_path / "config.toml"
    body = text()
    if cluster is not None:
        body += f"\n[cluster]\n{cluster}\n"
    path.write_text(body, encoding="utf-8")
    return load(path).cluster


def test_absent_means_a_single_node(tmp_path: Path) -> None:
    assert load_with(tmp_path, None) is None


def test_node_and_urls_are_read_with_defaults(tmp_path: Path) -> None:
    cluster = load_with(tmp_path, f'node = "n1"\nnats = {NATS}')
    assert cluster == ClusterConfig(
        node="n1",
        nats=("nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"),
    )
    assert cluster.duplicate_window == Duration(120_000)
    assert cluster.lease_ttl == Duration(10_000)
    assert cluster.snapshot_interval == Duration(300_000)


def test_every_key_is_read(tmp_path: Path) -> None:
    cluster = load_with(
        tmp_path,
        'node = "east-2"\nnats = ["tls://nats.internal:4222"]\nduplicate_window = "5m"\n'
        'retention = "3d"\nlease_ttl = "4s"\nsnapshot_interval = "1h"',
    )
    assert cluster is not None
    assert cluster.duplicate_window == Duration(300_000)
    assert cluster.retention == Duration(3 * 86_400_000)
    assert cluster.lease_ttl == Duration(4_000)
    assert cluster.snapshot_interval == Duration(3_600_000)


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (f"nats = {NATS}", "cluster.node", "missing"),
        ('node = "n.1"\nnats = ' + NATS, "cluster.node", "NATS subject token"),
        ('node = "n1"', "cluster.nats", "missing"),
        ('node = "n1"\nnats = []', "cluster.nats", "is empty"),
        ('node = "n1"\nnats = ["http://x:1"]', "cluster.nats[0]", "not a NATS URL"),
        ('node = "n1"\nnats = "nats://x:1"', "cluster.nats", "array"),
        (f'node = "n1"\nnats = {NATS}\nlease_ttl = "10ms"', "cluster.lease_ttl", "1s"),
        (f'node = "n1"\nnats = {NATS}\nnode_name = "x"', "cluster.node_name", "unknown"),
        (
            f'node = "n1"\nnats = {NATS}\nretention = "1h"\nsnapshot_interval = "31m"',
            "cluster.retention",
            "twice cluster.snapshot_interval (31m)",
        ),
        (f'node = "n1"\nnats = {NATS}\nsnapshot_interval = "0s"', "cluster.snapshot_interval", ""),
    ],
)
def test_mistakes_are_named(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, body)
    problems = [p for p in caught.value.problems if p.startswith(f"{key}: ")]
    assert len(problems) == 1, str(caught.value)
    assert words in problems[0], problems[0]
