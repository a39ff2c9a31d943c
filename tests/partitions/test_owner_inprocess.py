"""The owner's logic in the test's own process (no process to start): its cells' shares of
the per-process limits, slices waiting for budget, a failed commit, a stopping owner, HTTP
queries; and the single-process daemon built from the same cell code."""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest

from meterd import memory
from meterd.app import build
from meterd.config import Config, load
from meterd.partitions import (
    Answer,
    BatchId,
    Channel,
    Part,
    Query,
    Slices,
    Unavailable,
    UnixTransport,
    Verdicts,
)
from meterd.partitions import owner as owner_process
from meterd.partitions._cell import share, wal_shared
from meterd.partitions._owner import Owner, call_asgi
from meterd.schema import Duration
from meterd.store import CommitFailed
from tests.partitions.test_owner import AUTH, NOW, A, B, C, a_slice, ev, write_config

WATCHDOG = 30


def config_with(folder: Path, **ingest: Any) -> Config:
    path = write_config(folder)
    if ingest:
        text = path.read_text().replace(
            "[ingest]\n",
            "[ingest]\n" + "".join(f"{key} = {value}\n" for key, value in ingest.items()),
        )
        path.write_text(text)
    return load(path)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Owner, Channel]]:
    owner = Owner(config, 0)
    await owner.open()
    address = str(config.path.parent / "owner.sock")
    try:
        with trio.fail_after(WATCHDOG):
            async with trio.open_nursery() as nursery:
                await nursery.start(owner.run, address)
                channel = await UnixTransport().connect(address)
                await channel.receive()  # hello
                yield owner, channel
                await channel.aclose()
                owner.stop()
    finally:
        await owner.aclose()


def test_a_process_splits_its_limits_evenly_over_its_cells(tmp_path: Path) -> None:
    assert share(20_000, 1) == 20_000
    assert share(20_000, 8) == 2_500
    assert share(5, 8) == 1  # never 0
    with pytest.raises(ValueError, match="at least one cell"):
        share(10, 0)
    config = config_with(tmp_path, max_in_flight_events=1000)
    owner = Owner(config, 0)  # 2 shards
    for cell in owner.cells.values():
        assert cell.accounts.budget.limit == 500
        assert cell.accounts.max_awake == config.accounts.max_awake // 2


def test_a_process_checkpoints_its_files_logs_as_often_as_one_store(tmp_path: Path) -> None:
    # Each cell of an owner checkpoints its file's log at wal_checkpoint_interval x cells:
    # the process as often in all as one store file (docs/partitions.md "Cells").
    config = config_with(tmp_path)
    every = config.store.wal_checkpoint_interval.seconds
    assert every > 0
    owner = Owner(config, 0)  # 2 shards
    assert len(owner.cells) == 2
    for cell in owner.cells.values():
        wal = cell.store.writer.wal
        assert wal is not None
        assert wal.interval == pytest.approx(every * 2)
    (tmp_path / "single").mkdir()
    single = build(config_with(tmp_path / "single")).accounts.store.writer.wal
    assert single is not None
    assert single.interval == pytest.approx(every)
    assert wal_shared(config.store, 1) is config.store
    off = dataclasses.replace(config.store, wal_checkpoint_interval=Duration(0))
    assert wal_shared(off, 8) is off  # 0: SQLite's own checkpoints, as configured


def test_the_single_process_daemon_is_one_cell_under_todays_root(tmp_path: Path) -> None:
    services = build(config_with(tmp_path))
    assert [info.id for info in services.root.which_children()] == [
        "store-writer",
        "accounts",
        "deliveries",
        "ingest",
        "api",
    ]
    assert services.root.name == "root"
    daemon = services.api.daemon
    assert daemon.root is services.root
    assert daemon.accounts is services.accounts
    assert services.accounts.budget.limit == daemon.config.ingest.max_in_flight_events


async def test_slices_wait_for_budget_in_order_and_all_get_verdicts(tmp_path: Path) -> None:
    # 2 events of budget over 2 cells: 1 each, so every slice after the first waits.
    async with running(config_with(tmp_path, max_in_flight_events=2)) as (owner, channel):
        slices = [
            a_slice(seq, 0, [ev(0, f"w{seq}-0", A), ev(1, f"w{seq}-1", B)]) for seq in range(1, 21)
        ]
        for piece in slices:
            await channel.send(piece)
        answers = [await channel.receive() for _ in slices]
        assert answers == [Verdicts(piece.batch, 0, 2, 0) for piece in slices]  # in order
        assert owner.cells[0].accounts.budget.waits > 0


async def test_a_failed_commit_is_unavailable_never_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(config_with(tmp_path)) as (owner, channel):
        writer = owner.cells[2].store.writer

        def fail(groups: Any, on_done: Any, **_: Any) -> None:
            error = CommitFailed("the group's transaction failed")
            error.__cause__ = OSError(28, "database or disk is full")
            on_done(error)

        monkeypatch.setattr(writer, "submit_batch", fail)
        answer = await _ask(channel, a_slice(1, 2, [ev(0, "f1", C)]))
        assert isinstance(answer, Unavailable)
        assert (answer.batch, answer.shard) == (BatchId("gw", 1, 1), 2)
        assert "shard 2 could not make the slice durable: CommitFailed" in answer.reason
        assert owner.cells[2].accounts.budget.used == 0  # given back
        # The other shard is not affected.
        assert await _ask(channel, a_slice(1, 0, [ev(0, "f1", A)])) == Verdicts(
            BatchId("gw", 1, 1), 0, 1, 0
        )


async def test_a_stopping_owner_answers_slices_unavailable(tmp_path: Path) -> None:
    async with running(config_with(tmp_path)) as (owner, channel):
        owner.stopping = True  # as after SIGTERM, before the channels close
        answer = await _ask(channel, a_slice(1, 0, [ev(0, "s1", A)]))
        assert isinstance(answer, Unavailable)
        assert "owner-0 is stopping" in answer.reason
        answer = await _ask(channel, Query(1, 0, "http", {"method": "GET", "path": "/healthz"}))
        assert isinstance(answer, Answer)
        assert answer.error is not None
        assert "stopping" in answer.error
        owner.stopping = False


async def test_a_bug_handling_a_message_is_answered_and_the_owner_stays_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(config_with(tmp_path)) as (owner, channel):

        def broken(piece: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(owner, "_groups", broken)
        answer = await _ask(channel, a_slice(1, 0, [ev(0, "b1", A)]))
        assert isinstance(answer, Unavailable)
        assert answer.reason == "the owner failed handling a Slice: RuntimeError: a bug"
        assert await _ask(channel, Query(9, 0, "ping")) == Answer(9, value="pong")


async def test_http_queries_keep_status_headers_and_body(tmp_path: Path) -> None:
    async with running(config_with(tmp_path)) as (_, channel):
        assert await _ask(channel, a_slice(1, 0, [ev(0, "h1", A, 9)])) == Verdicts(
            BatchId("gw", 1, 1), 0, 1, 0
        )
        args = {"method": "GET", "path": f"/v1/accounts/{A}/events", "query": "limit=1"}
        answer = await _ask(channel, Query(1, 0, "http", {**args, "headers": AUTH}))
        assert isinstance(answer, Answer)
        assert answer.value["status"] == 200
        assert ["content-type", "application/json"] in answer.value["headers"]
        assert b'"id":"h1"' in answer.value["body"]
        # Without the token: the cell's own check (the gateway checks first).
        answer = await _ask(channel, Query(2, 0, "http", args))
        assert isinstance(answer, Answer)
        assert answer.value["status"] == 401
        # A body reaches the route (a bad one is the route's 400).
        post = {
            "method": "POST",
            "path": f"/v1/accounts/{A}/adjustments",
            "headers": [*AUTH, ["content-type", "application/json"]],
            "body": b"{not json",
        }
        answer = await _ask(channel, Query(3, 0, "http", post))
        assert isinstance(answer, Answer)
        assert answer.value["status"] == 400


async def test_an_app_that_fails_before_answering_is_an_error() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await call_asgi(broken, "GET", "/", "", [], b"")  # type: ignore[arg-type]

    async def answers_then_fails(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert message == {"type": "http.request", "body": b"hi", "more_body": False}
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"oops"})
        raise RuntimeError("after the answer")

    answer = await call_asgi(answers_then_fails, "POST", "/", "", [], b"hi")  # type: ignore[arg-type]
    assert answer == {"status": 500, "headers": [], "body": b"oops"}


async def _ask(channel: Channel, message: Any) -> Any:
    await channel.send(message)
    return await channel.receive()


async def test_an_account_in_two_runs_of_a_slice_keeps_each_events_index(tmp_path: Path) -> None:
    # The owner builds one group per run of an account (a gateway sends an account's events
    # together); an account seen again joins its first group, each index kept.
    async with running(config_with(tmp_path)) as (_owner, channel):
        first = a_slice(1, 0, [ev(0, "r1", A), ev(1, "r2", A)])
        assert await _ask(channel, first) == Verdicts(first.batch, 0, 2, 0)
        again = a_slice(
            2,
            0,
            [ev(0, "r1", A), ev(1, "r3", B), ev(2, "r2", A, quantity=5), ev(3, "r4", A)],
        )
        answer = await _ask(channel, again)
        assert isinstance(answer, Verdicts)
        assert (answer.accepted, answer.duplicates) == (2, 1)  # r3, r4 new; r1 the same
        assert [(r.index, r.id, r.code, r.account) for r in answer.id_conflicts] == [
            (2, "r2", "id_conflict", A)
        ]


def test_the_cells_of_a_process_read_its_frozen_objects_once_per_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gc.get_freeze_count() walks the whole permanent generation (tens of ms at 10,000
    # accounts); it is the process's figure, so one reading serves every cell's /metrics.
    calls: list[int] = []

    def counted() -> int:
        calls.append(1)
        return 7

    monkeypatch.setattr(gc, "get_freeze_count", counted)
    monkeypatch.setattr(memory, "_frozen", [-math.inf, 0])
    owner = Owner(config_with(tmp_path), 0)  # 2 cells
    for cell in owner.cells.values():
        assert b"meterd_gc_frozen_objects 7.0" in generate_latest(cell.metrics.registry)
    assert len(calls) == 1


def test_a_freeze_makes_the_next_reading_of_frozen_objects_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemon freezes its start-up once built, after its collectors were registered
    # (which reads them): a cached count from before the freeze must not outlive it.
    counts = iter([0, 5])
    monkeypatch.setattr(gc, "get_freeze_count", lambda: next(counts))
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(memory, "_frozen", [-math.inf, 0])
    assert memory.frozen_objects() == 0
    assert memory.frozen_objects() == 0  # within the TTL: the same reading
    memory.freeze()
    assert memory.frozen_objects() == 5


async def test_an_owners_slices_of_a_batch_get_one_answer_with_their_sums(tmp_path: Path) -> None:
    async with running(config_with(tmp_path)) as (owner, channel):
        first = a_slice(1, 2, [ev(1, "m1", C)])
        assert await _ask(channel, first) == Verdicts(first.batch, 2, 1, 0)
        batch = BatchId("gw", 2, 2)
        parts = [
            Part(0, [ev(0, "m2", A), ev(2, "m3", B)]),
            Part(2, [ev(1, "m1", C), ev(3, "m4", C), ev(4, "m1x", C)]),
        ]
        # The same id as m1 with another quantity: an id_conflict, named by its index.
        parts[1].events[2] = ev(4, "m1", C, quantity=9)
        answer = await _ask(channel, Slices(batch, 0, "platform", NOW, parts))
        assert isinstance(answer, Verdicts)
        assert (answer.batch, answer.shard) == (batch, 0)  # the first part's shard
        assert (answer.accepted, answer.duplicates) == (3, 1)  # m2, m3, m4; m1 again
        assert [(r.index, r.id, r.code, r.account) for r in answer.id_conflicts] == [
            (4, "m1", "id_conflict", C)
        ]
        assert owner.slices == 3  # a slice per part
        rows = [owner.cells[s].store.writer.stats.commits for s in (0, 2)]
        assert all(commits >= 1 for commits in rows)


async def test_one_part_that_cannot_be_made_durable_fails_the_whole_message(
    tmp_path: Path,
) -> None:
    async with running(config_with(tmp_path)) as (_owner, channel):
        batch = BatchId("gw", 1, 1)
        parts = [Part(0, [ev(0, "n1", A)]), Part(1, [ev(1, "n2", A)])]  # shard 1: owner 1's
        answer = await _ask(channel, Slices(batch, 0, "platform", NOW, parts))
        assert isinstance(answer, Unavailable)
        assert (answer.batch, answer.shard) == (batch, 0)
        assert "owner-0 does not hold shard 1" in answer.reason
        # Only one answer: the next one on the channel is the next question's.
        assert await _ask(channel, Query(9, 0, "ping")) == Answer(9, value="pong")


def _sample(cell_registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = cell_registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


async def test_each_slices_message_is_timed_once_in_its_first_parts_cell(tmp_path: Path) -> None:
    # meterd_owner_slice_seconds: one observation per message (per producer batch), in the
    # cell of its first part, so the gateway's sum over an owner's shards counts it once.
    async with running(config_with(tmp_path)) as (owner, channel):
        parts = [Part(2, [ev(0, "t1", C)]), Part(0, [ev(1, "t2", A)])]
        answer = await _ask(channel, Slices(BatchId("gw", 7, 7), 2, "platform", NOW, parts))
        assert isinstance(answer, Verdicts)
        counts = {
            shard: _sample(cell.metrics.registry, "meterd_owner_slice_seconds_count")
            for shard, cell in owner.cells.items()
        }
        assert counts == {0: 0.0, 2: 1.0}
        took = _sample(owner.cells[2].metrics.registry, "meterd_owner_slice_seconds_sum")
        assert took > 0  # it waited for a commit


def test_an_owners_collector_pauses_are_in_every_cells_metrics(tmp_path: Path) -> None:
    # The gateway's /metrics counts a process's meterd_gc_* once, from whichever of its
    # cells answered: each cell has the process's pauses.
    owner = Owner(config_with(tmp_path), 0)
    pauses = memory.GcPauses(owner_process._observe_gc_pause(owner))
    pauses.install()
    try:
        gc.collect(0)
    finally:
        pauses.remove()
    name = "meterd_gc_pause_seconds_count"
    for cell in owner.cells.values():
        assert _sample(cell.metrics.registry, name, {"generation": "0"}) == 1.0
