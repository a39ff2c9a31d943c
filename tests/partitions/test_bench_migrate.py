"""``meterd bench migrate`` on a tiny load: its table, the baseline beside the migrations."""

from __future__ import annotations

from pathlib import Path

from meterd.bench.migrate import run


def test_the_bench_prints_the_migrations_beside_the_copy(tmp_path: Path) -> None:
    lines = run(events=400, accounts=20, per_append=20, owners=1, where=tmp_path)
    assert lines[0].startswith("store: 400 events, 20 accounts")
    names = [line[:34].strip() for line in lines[2:]]
    assert names == ["copy the store file (baseline)", "single -> 16 shards", "16 shards -> single"]
    assert lines[2].split()[-2] == "1.0x"
