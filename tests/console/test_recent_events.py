"""The actor page's recent events, newest first (issue 18): the reader's ``newest_first``
pages over indexed and tail batches alike, and ``GET .../events?order=desc``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.model import Event
from meterd.store import Reader, Writer, open_reader
from meterd.store.journal_index import MAX_SLICES_PER_GROUP
from meterd.store.schema import SLICES
from tests.console.test_console_api import HEADERS, send
from tests.examples import examples
from tests.ingest.test_server import make_config, running
from tests.store.helpers import running as writer_running
from tests.store.helpers import store_config
from tests.store.test_journal_index import Clock


def event(event_id: str, account: str, time: int, meter: str = "api") -> Event:
    return Event(event_id, account, meter, 1, time, (), "prod", 1)


async def read_all(reader: Reader, limit: int, newest_first: bool, **where: int | str) -> list[str]:
    meter = where.get("meter")
    low, high = int(where.get("from", 0)), int(where.get("to", 10**12))
    seen: list[str] = []
    cursor = None
    while True:
        page = await reader.events(
            "acme",
            None if meter is None else str(meter),
            low,
            high,
            limit,
            cursor,
            newest_first=newest_first,
        )
        assert len(page.events) <= limit
        seen.extend(e.id for e in page.events)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_newest_first_pages_over_indexed_and_tail_batches(tmp_path: Path) -> None:
    """150 batches of acme (the first 40 indexed, the rest in the tail, more than a read
    chunk of 64 each): newest first is journal order reversed, for every page size, with
    the tail in memory or read from the journal, and the first page is the newest."""
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer = Writer(path, store_config(commit_interval=0, index_cycle=2.56), clock=clock)
    async with writer_running(writer), await open_reader(path) as sql_reader:
        for n in range(150):
            if n == 40:
                clock.now += 2_560
                for k in range(SLICES // MAX_SLICES_PER_GROUP):
                    await writer.append("globex", [event(f"g{k}", "globex", 1000)])
            meter = "jobs" if n % 3 == 0 else "api"
            batch = [event(f"a{n}-{i}", "acme", 1000 + n, meter) for i in range(2)]
            await writer.append("acme", batch)
        assert len(writer.journal_tail.entries("acme")) == 110
        journal = [f"a{n}-{i}" for n in range(150) for i in range(2)]
        memory_reader = Reader(path, tail=writer.journal_tail.entries)
        try:
            for reader in (memory_reader, sql_reader):
                for limit in (1, 3, 64, 129, 500):
                    newest = await read_all(reader, limit, newest_first=True)
                    assert newest == journal[::-1], (limit, reader is sql_reader)
                first = await reader.events("acme", None, 0, 10**12, 5, newest_first=True)
                assert [e.id for e in first.events] == journal[::-1][:5]
                # The same filters as in journal order (meter, event time), reversed.
                where: dict[str, int | str] = {"meter": "jobs", "from": 1010, "to": 1100}
                forward = await read_all(reader, 7, False, **where)
                assert forward
                assert await read_all(reader, 7, True, **where) == forward[::-1]
        finally:
            await memory_reader.aclose()


@settings(max_examples=examples(25), deadline=None)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=12),
    limit=st.integers(min_value=1, max_value=6),
    window=st.tuples(st.integers(0, 30), st.integers(0, 30)),
)
async def test_newest_first_is_journal_order_reversed(
    batches: list[int], limit: int, window: tuple[int, int]
) -> None:
    low, high = min(window), max(window)
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "s.sqlite3"
        async with (
            writer_running(Writer(path, store_config())) as writer,
            await open_reader(path) as reader,
        ):
            for n, size in enumerate(batches):
                events = [event(f"e{n}-{i}", "acme", (n * 3 + i) % 30) for i in range(size)]
                await writer.append("acme", events)
            bounds: dict[str, int | str] = {"from": low, "to": high}
            forward = await read_all(reader, limit, False, **bounds)
            assert await read_all(reader, limit, True, **bounds) == forward[::-1]


async def test_the_events_route_lists_newest_first(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as services:
        await send(services, ["acme"], per_account=3)
        await send(services, ["acme"], per_account=5)  # acme-0..4 again: duplicates
        async with httpx.AsyncClient(base_url=services.api.url, headers=HEADERS) as api:
            url = "/v1/accounts/acme/events"
            forward = (await api.get(url)).json()["events"]
            newest = await api.get(url, params={"order": "desc", "limit": 2})
            assert newest.status_code == 200
            page = newest.json()
            more = await api.get(url, params={"order": "desc", "cursor": page["next_cursor"]})
            ids = [e["id"] for e in page["events"] + more.json()["events"]]
            assert ids == [e["id"] for e in forward][::-1]
            assert len(ids) == 5
            wrong = await api.get(url, params={"order": "newest"})
            assert wrong.status_code == 400
            assert "order" in wrong.json()["error"]["message"]
