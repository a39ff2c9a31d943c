"""Replaying a shard's log decides the same: two fresh stores fed the same log (random slices
with re-sends, id conflicts, events older than the dedupe horizon, junk) give byte-identical
verdicts, journal, audit trail and windows; and two stores restored from the same snapshot
(a copy by the backup API of a store that applied a prefix of the log) and fed the rest
decide byte for byte the same, and as a store that replayed the whole log. No NATS here: the
log is handed to the applier as it would read it."""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.cluster import ShardApplier
from meterd.cluster._nats import LogMessage
from meterd.cluster._snapshot import copy_store, store_position
from meterd.partitions import encode, shard_files
from meterd.partitions._owner import call_asgi
from tests.cluster.cells import (
    ADMIN,
    DAY,
    LAYOUT,
    MINUTE,
    NOW,
    SHARD,
    T0,
    a_slice,
    accounts_in,
    ev,
    rows,
    running_cell,
    write_config,
)

ACCOUNTS = accounts_in(SHARD, 2)
HOUR = 60 * MINUTE
AUTH = [("authorization", f"Bearer {ADMIN}")]

_event = st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from([f"e{n}" for n in range(6)]),  # few ids: re-sends and conflicts
    st.integers(1, 3),  # quantity
    st.one_of(st.integers(0, 3).map(lambda k: T0 + k * MINUTE), st.just(T0 - 3 * DAY)),
)
_log = st.lists(
    st.one_of(st.lists(_event, min_size=1, max_size=4), st.just(None)),  # None: junk
    min_size=1,
    max_size=12,
)


def messages(log: list[Any]) -> list[LogMessage]:
    """The log as the applier reads it: slices at increasing sequences and receipt times."""
    out = []
    for number, entry in enumerate(log, start=1):
        seq = 3 * number  # other shards' messages in between
        if entry is None:
            data = b"\xc1junk"
        else:
            events = [ev(i, id, account, q, at) for i, (account, id, q, at) in enumerate(entry)]
            piece = a_slice(number, SHARD, events)
            piece = msgspec.structs.replace(piece, received_at=NOW + number * HOUR)
            data = encode(piece)
        out.append(LogMessage(seq, f"meterd.log.{SHARD}", data, f"id-{number}", NOW + number))
    return out


async def replay(
    folder: Path, log: list[LogMessage], *, snapshot: Path | None = None
) -> dict[str, Any]:
    """``log`` applied to a fresh store, or to one restored from ``snapshot``."""
    config = write_config(folder)
    if snapshot is not None:
        store = shard_files(config, SHARD).store
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot, store)
    async with running_cell(config, SHARD) as cell:
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        # as run() does: the log is read from the store's position on
        applier.applied = applier.read = store_position(cell.store_path, SHARD)
        for message in log:
            await applier.apply(message)
        await applier.wait_drained()
        verdicts = []
        while True:
            try:
                verdicts.append(applier.verdicts.receive_nowait())
            except trio.WouldBlock:
                break
        windows = {}
        for account in ACCOUNTS:
            answer = await call_asgi(
                cell.app(),
                "GET",
                f"/v1/accounts/{account}/usage",
                f"meter=dyno.seconds&from={T0 - 4 * DAY}&to={T0 + DAY}&window=minute&group_by=app",
                AUTH,
                b"",
            )
            assert answer["status"] in (200, 404), answer
            windows[account] = answer["body"]
        store = cell.store_path
    return {
        "verdicts": verdicts,
        "windows": windows,
        "journal": rows(store, "SELECT * FROM event_batches ORDER BY batch_id"),
        "audit": rows(store, "SELECT * FROM audit ORDER BY audit_id"),
        "position": rows(store, "SELECT * FROM log_positions"),
    }


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=_log)
def test_two_replays_of_one_log_decide_byte_for_byte_the_same(log: list[Any]) -> None:
    read = messages(log)
    with tempfile.TemporaryDirectory() as tmp:
        first = trio.run(replay, Path(tmp) / "a", read)
        second = trio.run(replay, Path(tmp) / "b", read)
    assert first == second
    assert first["position"] == [(f"METERD_LOG/meterd.log.{SHARD}", read[-1].seq)]
    assert len(first["verdicts"]) == sum(1 for entry in log if entry is not None)


async def snapshot_after(folder: Path, log: list[LogMessage]) -> Path:
    """A snapshot (the backup API's copy) of a store that applied ``log``."""
    await replay(folder, log)
    config = write_config(folder)
    target = folder / "snapshot.sqlite3"
    copy_store(shard_files(config, SHARD).store, target, SHARD)
    return target


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=_log, cut=st.integers(0, 12))
def test_two_replays_from_one_snapshot_decide_byte_for_byte_the_same(
    log: list[Any], cut: int
) -> None:
    read = messages(log)
    cut = min(cut, len(read))
    head, tail = read[:cut], read[cut:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        snapshot = trio.run(snapshot_after, root / "s", head)
        assert store_position(snapshot, SHARD) == (head[-1].seq if head else 0)
        first = trio.run(partial(replay, root / "a", tail, snapshot=snapshot))
        second = trio.run(partial(replay, root / "b", tail, snapshot=snapshot))
        whole = trio.run(replay, root / "w", read)
    assert first == second
    assert first["position"] == whole["position"]
    # ... and the same as a store that replayed the whole log: the windows, and the
    # verdicts of the slices after the snapshot
    assert first["windows"] == whole["windows"]
    assert first["verdicts"] == whole["verdicts"][len(whole["verdicts"]) - len(first["verdicts"]) :]
    assert len(first["verdicts"]) == sum(1 for entry in log[cut:] if entry is not None)
