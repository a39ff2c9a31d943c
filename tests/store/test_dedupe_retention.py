"""Dedupe retention (meterd/store/retention.py): rows past ``dedupe_window`` are forgotten by
event time and deleted, and no verdict depends on when (or whether) they were deleted."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.model import DAY_MS, Event
from meterd.store import AppendResult, Writer, journal_index, retention, schema
from tests.examples import examples
from tests.ingest.test_server import connect, make_config, now_ms
from tests.ingest.test_server import ev as wire_event
from tests.ingest.test_server import running as running_daemon
from tests.store.helpers import (
    Collector,
    dedupe_row_keys_by_method,
    rows,
    running,
    store_config,
    until,
)

WINDOW = 60_000  # dedupe_window, ms
STEP = retention.horizon_step(WINDOW)
T0 = 1_764_000_000_000


def ev(event_id: str, time: int, account: str = "acme", quantity: int = 1) -> Event:
    return Event(event_id, account, "api", quantity, time, (), "prod", 1)


def collide(patch: pytest.MonkeyPatch) -> None:
    """Every (account, id) gets dedupe key 777 (the writer's keys and the rebuild's)."""
    patch.setattr(Event, "dedupe_key", lambda self: 777)
    patch.setattr(schema, "account_bucket", lambda account: 0)
    patch.setattr(journal_index, "account_bucket", lambda account: 0)
    patch.setattr(schema, "dedupe_row_keys", dedupe_row_keys_by_method)


class Clock:
    """The writer's wall clock (ms), moved by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_the_horizon_is_the_window_before_receipt_rounded_down_to_its_step() -> None:
    assert STEP == 7_000  # an eighth of the window, whole seconds
    assert retention.horizon_step(35 * 86_400_000) == 378_000_000
    assert retention.horizon_step(1_000) == 1_000
    assert retention.horizon_at(T0, WINDOW) == (T0 - WINDOW) // STEP * STEP
    assert retention.horizon_at(T0, WINDOW) % 1_000 == 0
    assert retention.horizon_at(T0, WINDOW) <= T0 - WINDOW < retention.horizon_at(T0, WINDOW) + STEP


async def test_rows_past_the_window_are_deleted_and_duplicates_inside_it_still_found(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    events = [ev(f"old-{n}", T0 - 1_000) for n in range(100)]

    def writer() -> Writer:
        return Writer(path, store_config(commit_interval=0), clock=clock, dedupe_window_ms=WINDOW)

    async with running(writer()) as w:
        assert (await w.append("acme", events)).accepted == list(range(100))
        assert (await w.append("acme", events[:3])).duplicates == [0, 1, 2]  # inside
    assert rows(path, "SELECT count(*) FROM dedupe") == [(100,)]

    # Two steps past the window: the old events are forgotten (their rows are deleted by
    # the first group's sweep), the new ones are remembered.
    clock.now = T0 + WINDOW + 2 * STEP
    async with running(writer()) as w:
        fresh = [ev(f"new-{n}", clock.now - 1_000) for n in range(50)]
        assert (await w.append("acme", fresh)).accepted == list(range(50))
        assert w.horizon is not None
        assert w.horizon > T0 - 1_000
        assert w.stats.dedupe_rows_swept == 100
        assert rows(path, "SELECT count(*) FROM dedupe WHERE time_s < ?", T0 // 1000) == [(0,)]
        again = await w.append(
            "acme",
            [
                fresh[0],  # a duplicate inside the window
                ev("new-1", clock.now - 1_000, quantity=2),  # a conflict inside it
                events[0],  # a re-send older than the horizon: too late
                ev("old-1", clock.now - 2_000),  # an old id counted again: new usage
            ],
        )
        assert again == AppendResult(3, [3], [0], [1], [2], w.horizon)
    assert rows(path, "SELECT count(*) FROM dedupe") == [(51,)]
    assert rows(path, "SELECT code, event_id FROM audit WHERE kind = 'rejected'") == [
        ("id_conflict", "new-1"),
        ("time_out_of_range", "old-0"),
    ]
    [(message,)] = rows(path, "SELECT message FROM audit WHERE code = 'time_out_of_range'")
    assert message == retention.too_late_message(T0 - 1_000, w.horizon)
    assert rows(path, "SELECT value FROM store_meta WHERE name = 'dedupe_horizon'") == [
        (w.horizon,)
    ]


async def test_a_sweep_goes_on_in_slices_and_while_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "SWEEP_BATCH", 7)
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    async with running(Writer(path, store_config(commit_interval=0), clock=clock)) as w:
        await w.append("acme", [ev(f"e{n}", T0 - 1_000) for n in range(60)])
    clock.now = T0 + WINDOW + STEP
    w = Writer(path, store_config(commit_interval=0), clock=clock, dedupe_window_ms=WINDOW)
    async with running(w):
        await w.append("acme", [ev("late", clock.now)])  # raises the horizon: a sweep starts
        assert 0 < w.stats.dedupe_rows_swept <= 7
        # Idle groups, queued by the housekeeper, take the next slices.
        await until(w, lambda: w.stats.dedupe_rows_swept >= 60)
        assert w.stats.idle_passes >= 60 // 7
        assert rows(path, "SELECT count(*) FROM dedupe") == [(0,)]  # "late" is in the tail


# -- verdicts are a function of the operations, whatever the deletions -----------------------


@dataclass(frozen=True)
class Op:
    advance: int  # ms the clock moves before the operation (back too)
    events: tuple[tuple[str, str, int, int], ...]  # (account, id, age in ms, quantity)


_ops = st.lists(
    st.builds(
        Op,
        st.sampled_from([0, 500, 1_000, 3_000, 9_000, -5_000]),  # -5 s: the clock went back
        st.lists(
            st.tuples(
                st.sampled_from(["acme", "globex"]),
                st.sampled_from("abcd"),
                st.sampled_from([0, 1_000, 4_000, 8_500, 12_000]),
                st.integers(1, 2),
            ),
            min_size=1,
            max_size=5,
        ).map(tuple),
    ),
    min_size=1,
    max_size=12,
)
SHORT = 8_000  # the property's dedupe_window (a 1 s step)


def _events(op: Op, now: int) -> list[tuple[str, list[Event]]]:
    groups: dict[str, list[Event]] = {}
    for account, event_id, age, quantity in op.events:
        groups.setdefault(account, []).append(ev(event_id, now - age, account, quantity))
    return list(groups.items())


Verdicts = list[tuple[list[int], list[int], list[int], list[int]]]


def model(ops: list[Op]) -> Verdicts:
    """The rule (meterd.store.retention), written out: a horizon raised by each operation's
    receipt, too late before it, and the counted copy of each id remembered while its
    time is not before it."""
    now, horizon = T0, None
    counted: dict[tuple[str, str], tuple[int, int]] = {}  # -> (fingerprint, time)
    out: Verdicts = []
    for op in ops:
        now += op.advance
        wanted = retention.horizon_at(now, SHORT)
        horizon = wanted if horizon is None else max(horizon, wanted)
        for account, events in _events(op, now):
            verdict: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
            for index, event in enumerate(events):
                known = counted.get((account, event.id))
                if event.time < horizon:
                    verdict[3].append(index)
                elif known is None or known[1] < horizon:
                    counted[(account, event.id)] = (event.fingerprint(), event.time)
                    verdict[0].append(index)
                elif known[0] == event.fingerprint():
                    verdict[1].append(index)
                else:
                    verdict[2].append(index)
            out.append(verdict)
    return out


@dataclass(frozen=True)
class Mode:
    restart_every: int  # operations per writer run
    sweep: bool  # whether forgotten rows are deleted (each group, in slices of 2)
    index_cycle: float  # small: rows reach the table early; large: they wait in the tail


async def decide(path: Path, ops: list[Op], mode: Mode) -> Verdicts:
    clock = Clock()
    out: Verdicts = []
    remaining = list(ops)
    while remaining:
        run, remaining = remaining[: mode.restart_every], remaining[mode.restart_every :]
        writer = Writer(
            path,
            store_config(commit_interval=0, index_cycle=mode.index_cycle),
            clock=clock,
            dedupe_window_ms=SHORT,
        )
        async with running(writer):
            for op in run:
                clock.now += op.advance
                done = Collector()
                writer.submit_batch(_events(op, clock.now), done)
                await writer.barrier()
                [outcome] = done.outcomes
                assert isinstance(outcome, list), outcome
                out.extend((r.accepted, r.duplicates, r.conflicts, r.too_late) for r in outcome)
    return out


MODES = (
    Mode(restart_every=100, sweep=True, index_cycle=0.001),
    Mode(restart_every=100, sweep=False, index_cycle=5.0),
    Mode(restart_every=2, sweep=True, index_cycle=5.0),
    Mode(restart_every=1, sweep=False, index_cycle=0.001),
)


def _no_sweep(conn: sqlite3.Connection, after: int, floor_s: int, limit: Any = None) -> Any:
    return None, 0


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops, collisions=st.booleans())
def test_verdicts_follow_the_rule_whatever_the_deletions_passes_and_restarts(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Op], collisions: bool
) -> None:
    """The same operations (same receipt times) get the model's verdicts in every mode:
    forgotten rows deleted early in small slices or never, rows in the table or still in
    the writer's tail, one writer or a restart after every operation; and when every
    (account, id) shares one dedupe key (the overflow rows, and a forgotten key taken
    over)."""
    expected = model(ops)
    where = tmp_path_factory.mktemp("retention")
    for number, mode in enumerate(MODES):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(retention, "SWEEP_BATCH", 2)
            patch.setattr(retention, "SWEEP_EVERY_MS", 0)
            if not mode.sweep:
                patch.setattr(retention, "sweep", _no_sweep)
            if collisions:
                collide(patch)
            got = trio.run(decide, where / f"{number}.sqlite3", ops, mode)
        assert got == expected, mode


async def test_a_restart_rebuilds_which_copy_of_an_id_holds_a_forgotten_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One id counted twice within one index cycle (first into the overflow table, then,
    once forgotten, as the new holder of its key): the restart's rebuild of the tail must
    give the key to the second copy (the one without an overflow row of its batch)."""
    collide(monkeypatch)
    path = tmp_path / "s.sqlite3"
    clock = Clock()

    def writer() -> Writer:
        return Writer(path, store_config(commit_interval=0), clock=clock, dedupe_window_ms=WINDOW)

    async with running(writer()) as w:
        assert (await w.append("acme", [ev("a", T0)])).accepted == [0]  # holds the key
    crashed = writer()

    async def crash(self: Writer) -> None:  # the stop writes no pass: as after a kill -9
        return None

    monkeypatch.setattr(Writer, "_pass_everything", crash)
    async with running(crashed) as w:
        assert (await w.append("acme", [ev("b", T0)])).accepted == [0]  # to the overflow
        clock.now = T0 + WINDOW + 2 * STEP  # "a" and that "b" are forgotten
        assert (await w.append("acme", [ev("b", clock.now)])).accepted == [0]  # the key
    monkeypatch.undo()
    collide(monkeypatch)
    assert rows(path, "SELECT batch_id FROM dedupe_overflow") == [(2,)]
    async with running(writer()) as w:
        again = await w.append("acme", [ev("b", clock.now), ev("b", clock.now, quantity=2)])
        assert (again.duplicates, again.conflicts) == ([0], [1])
    assert rows(path, "SELECT key, batch_id FROM dedupe") == [(777, 3)]


async def test_an_event_older_than_the_stores_horizon_is_rejected_in_the_ack(
    tmp_path: Path,
) -> None:
    """Ingest's clock behind the writer's (a clock that went back, or an event validated
    just before the horizon moved): ingest accepts the time, the writer's horizon decides,
    before any dedupe lookup, and the ack says so."""
    async with running_daemon(make_config(tmp_path)) as services:
        window = services.ingest.config.dedupe_window.ms
        now = now_ms()
        services.ingest.clock = lambda: now - 6 * DAY_MS
        old = now - window - 5 * DAY_MS  # inside late_window for ingest's clock
        async with connect(services) as client:
            fresh = wire_event("fresh", time=now - 6 * DAY_MS)
            await client.batch(1, [fresh, wire_event("old", time=old)])
            ack = await client.ack(1)
        assert ack["accepted"] == 1
        [rejection] = ack["rejected"]
        assert (rejection["index"], rejection["id"], rejection["code"]) == (
            1,
            "old",
            "time_out_of_range",
        )
        horizon = services.store.writer.horizon
        assert horizon is not None
        assert old < horizon <= now - window
        assert rejection["message"] == retention.too_late_message(old, horizon)


def as_before_retention(conn: sqlite3.Connection) -> None:
    """Take a store's dedupe tables back to their shape before schema step 7 (for tests
    that make a store look older by lowering its ``user_version`` below 7)."""
    conn.execute("ALTER TABLE dedupe DROP COLUMN time_s")
    conn.execute("DROP TABLE store_meta")
    conn.execute(
        "CREATE TABLE dedupe_overflow_v6 (account TEXT NOT NULL, event_id TEXT NOT NULL,"
        " batch_id INTEGER NOT NULL, fingerprint INTEGER NOT NULL,"
        " PRIMARY KEY (account, event_id)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO dedupe_overflow_v6 SELECT account, event_id, max(batch_id), fingerprint"
        " FROM dedupe_overflow GROUP BY account, event_id"
    )
    conn.execute("DROP TABLE dedupe_overflow")
    conn.execute("ALTER TABLE dedupe_overflow_v6 RENAME TO dedupe_overflow")


def test_a_store_from_before_retention_gets_its_rows_event_times(tmp_path: Path) -> None:
    """The migration: dedupe and overflow rows get their batch's newest event time (never
    earlier than their own, in seconds, floor), and the horizon is not set."""
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:6]:  # a store as meterd wrote them before retention
        step.apply(conn, {})
    conn.execute("PRAGMA user_version = 6")
    conn.executemany(
        "INSERT INTO event_batches (batch_id, account, received_at, count, payload,"
        " min_time, max_time) VALUES (?, 'acme', 0, 1, x'90', ?, ?)",
        [(1, -1_500, -1_500), (2, T0 - 5_000, T0 - 1_500)],
    )
    conn.executemany("INSERT INTO dedupe VALUES (?, ?, 9)", [(10, 1), (11, 2)])
    conn.execute("INSERT INTO dedupe_overflow VALUES ('acme', 'x', 2, 9)")
    conn.close()

    schema.open_database(path).close()
    assert rows(path, "SELECT key, batch_id, time_s FROM dedupe") == [
        (10, 1, -2),  # floor, before 1970 too
        (11, 2, (T0 - 1_500) // 1_000),
    ]
    assert rows(path, "SELECT account, event_id, batch_id, time_s FROM dedupe_overflow") == [
        ("acme", "x", 2, (T0 - 1_500) // 1_000)
    ]
    assert rows(path, "SELECT count(*) FROM store_meta") == [(0,)]


async def test_a_writer_that_starts_with_forgotten_rows_deletes_them_while_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    async with running(Writer(path, store_config(commit_interval=0), clock=clock)) as w:
        await w.append("acme", [ev(f"e{n}", T0 - 1_000) for n in range(20)])
    clock.now = T0 + WINDOW + STEP
    with monkeypatch.context() as patch:
        patch.setattr(retention, "sweep", _no_sweep)  # stopped before its sweep ran
        async with running(
            Writer(path, store_config(commit_interval=0), clock=clock, dedupe_window_ms=WINDOW)
        ) as w:
            await w.append("acme", [ev("late", clock.now)])
    assert rows(path, "SELECT count(*) FROM dedupe") == [(21,)]
    w = Writer(path, store_config(commit_interval=0), clock=clock, dedupe_window_ms=WINDOW)
    async with running(w):
        with trio.fail_after(30):  # a safety net against a hang, not a timing assertion
            # No operation: the sweep due since the start runs idle (the housekeeper's).
            await until(w, lambda: w.stats.idle_passes >= 1)
        assert w.stats.dedupe_rows_swept == 20
    assert rows(path, "SELECT count(*) FROM dedupe") == [(1,)]
