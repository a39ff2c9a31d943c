"""``meterd.bench.partitions`` on a tiny load: every event lands once, in its partition's unit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meterd.bench import partitions as bench
from meterd.partitions import partition_of


@pytest.mark.parametrize(("units", "threads"), [(1, 1), (4, 1), (4, 2)])
def test_each_layout_stores_every_event_in_its_partitions_unit(
    tmp_path: Path, units: int, threads: int
) -> None:
    options = bench.Options(partitions=8, events=1_200, accounts=50, batch=100, index_every=2)
    result = bench.run_layout(options, units, tmp_path, threads)
    assert result.events == 1_200
    assert result.group_commits == 3  # 400 events each
    assert result.commits >= result.group_commits
    stored = 0
    for unit in range(units):
        with sqlite3.connect(tmp_path / f"unit-{unit:03d}.sqlite3") as conn:
            for account, count in conn.execute("SELECT account, count FROM event_batches"):
                assert partition_of(account, 8) * units // 8 == unit
                stored += count
            (dedupe,) = conn.execute("SELECT count(*) FROM dedupe").fetchone()
            (batches,) = conn.execute("SELECT sum(count) FROM event_batches").fetchone()
            assert dedupe == (batches or 0)  # the last group commit wrote the index rows
    assert stored == 1_200


def test_the_report_prints_each_layout_beside_the_one_file_layout(tmp_path: Path) -> None:
    options = bench.Options(
        partitions=4, layouts=("1", "4x2"), events=400, accounts=20, batch=50,
        directory=str(tmp_path), hash_samples=200, spread_sizes=(1_000,),
    )  # fmt: skip
    report = bench.run(options)
    text = bench.format_report(report)
    assert "1 file" in text
    assert "4 files (1/part.), 2 thr." in text
    assert "1.00x" in text
    assert "blake2b-64 (chosen)" in text
    assert list(tmp_path.iterdir()) == []  # the stores are removed
