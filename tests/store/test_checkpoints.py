"""Checkpoints (merged deltas), recovery after the watermark, quarantine."""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from meterd.store import (
    Writer,
    open_reader,
)
from tests.store.helpers import ev, running, store_config

# -- checkpoints, recovery, quarantine -----------------------------------------------------


async def test_a_checkpoint_merges_its_deltas_into_the_stored_windows(tmp_path: Path) -> None:
    """``merge``: a stored window becomes merge(stored, delta), read and written in the
    checkpoint's transaction; a new window is stored as given; other accounts' windows at
    the same key are not touched."""
    path = tmp_path / "s.sqlite3"
    calls: list[tuple[str, bytes, bytes]] = []

    def concat(meter: str, stored: bytes, delta: bytes) -> bytes:
        calls.append((meter, stored, delta))
        return stored + b"+" + delta

    async with running(Writer(path, store_config())) as writer, await open_reader(path) as reader:
        await writer.checkpoint("acme", [("api", 0, "", b"a"), ("api", 60_000, "eu", b"b")], 1)
        await writer.checkpoint(
            "acme", [("api", 0, "", b"c"), ("api", 120_000, "", b"d")], 2, merge=concat
        )
        await writer.checkpoint("globex", [("api", 0, "", b"g")], 7, merge=concat)
        acme = await reader.load_account("acme")
        assert acme.watermark == 2
        assert sorted(acme.windows) == [
            ("api", 0, "", b"a+c"),
            ("api", 60_000, "eu", b"b"),
            ("api", 120_000, "", b"d"),
        ]
        assert calls == [("api", b"a", b"c")]
        globex = await reader.load_account("globex")
        assert (globex.watermark, globex.windows) == (7, [("api", 0, "", b"g")])


async def test_a_failing_merge_fails_its_checkpoint_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"

    def corrupt(meter: str, stored: bytes, delta: bytes) -> bytes:
        raise ValueError(f"window state of {meter} cannot be decoded")

    async with running(Writer(path, store_config())) as writer, await open_reader(path) as reader:
        await writer.checkpoint("acme", [("api", 0, "", b"a")], 1)
        commits = writer.stats.commits

        async def failing() -> None:
            with pytest.raises(ValueError, match="cannot be decoded"):
                await writer.checkpoint(
                    "acme", [("api", 60_000, "", b"new"), ("api", 0, "", b"x")], 2, merge=corrupt
                )

        async with trio.open_nursery() as nursery:  # queued in one tick: one group
            nursery.start_soon(failing)
            nursery.start_soon(
                partial(writer.checkpoint, merge=corrupt), "globex", [("api", 0, "", b"g")], 5
            )
        assert writer.stats.commits == commits + 1
        assert writer.stats.failed_commits == 0
        acme = await reader.load_account("acme")
        assert (acme.watermark, acme.windows) == (1, [("api", 0, "", b"a")])  # none of it
        globex = await reader.load_account("globex")
        assert (globex.watermark, globex.windows) == (5, [("api", 0, "", b"g")])


async def test_checkpoint_and_load_account_replay_exactly_after_the_watermark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config())) as writer, await open_reader(path) as reader:
        assert await reader.load_account("acme") == (0, [], [])
        b1 = await writer.append("acme", [ev("1"), ev("2")])
        await writer.append("globex", [ev("g", "globex")])
        b3 = await writer.append("acme", [ev("3", time=180_000)])
        b4 = await writer.append("acme", [ev("4", quantity=Decimal("0.25"))])
        assert (b1.batch_id, b3.batch_id, b4.batch_id) == (1, 3, 4)

        loaded = await reader.load_account("acme")
        assert [batch_id for batch_id, _ in loaded.replay] == [1, 3, 4]

        await writer.checkpoint(
            "acme", [("api", 60_000, "", b"s1"), ("api", 180_000, "eu", b"s3")], 3
        )
        loaded = await reader.load_account("acme")
        assert loaded.watermark == 3
        assert loaded.windows == [("api", 60_000, "", b"s1"), ("api", 180_000, "eu", b"s3")]
        assert loaded.replay == [(4, [ev("4", quantity=Decimal("0.25"))])]

        # A later checkpoint upserts its windows and moves the watermark with them.
        await writer.checkpoint("acme", [("api", 60_000, "", b"s1+4")], 4)
        loaded = await reader.load_account("acme", windows_since=100_000)
        assert (loaded.watermark, loaded.replay) == (4, [])
        assert loaded.windows == [("api", 180_000, "eu", b"s3")]
        assert await reader.windows("acme", "api", 0, 180_000) == [(60_000, "", b"s1+4")]
        assert await reader.windows("acme", "api", 60_001, 10**9) == [(180_000, "eu", b"s3")]
        assert await reader.windows("acme", "other", 0, 10**9) == []
        assert (await reader.load_account("globex")).replay[0][0] == 2
        assert await reader.known_accounts() == 2


async def test_quarantined_events_are_listed_and_left_out_of_replay(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with (
        running(Writer(path, store_config(), clock=lambda: 777)) as writer,
        await open_reader(path) as r,
    ):
        batch = await writer.append("acme", [ev("ok"), ev("poison"), ev("ok2")])
        assert batch.batch_id == 1
        await writer.quarantine("acme", 1, "poison", "ZeroDivisionError: boom")
        await writer.quarantine("acme", 1, "poison", "ZeroDivisionError: boom again")
        await writer.quarantine("globex", 9, "x", "other")
        listed = await r.quarantined("acme")
        assert [(q.batch_id, q.event_id, q.error, q.at) for q in listed] == [
            (1, "poison", "ZeroDivisionError: boom again", 777)
        ]
        assert len(await r.quarantined()) == 2
        assert await r.quarantined_count() == 2  # counted by SQLite, for /metrics
        watermark, windows, replay = await r.load_account("acme")  # a 3-tuple
        assert (watermark, windows, replay) == (0, [], [(1, [ev("ok"), ev("ok2")])])
