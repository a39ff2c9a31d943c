"""Replaying a shard's log decides the same: two fresh stores fed the same log (random slices
with re-sends, id conflicts, events older than the dedupe horizon, junk, corrections:
adjustments and voids, a second void of one event refused, and closes of the month, a
second one found closed) give byte-identical verdicts,
journal, audit trail, windows, billing records and alert crossings (their delivery bodies);
and two stores restored from the same snapshot (a copy by the backup API of a store that
applied a prefix of the log, with its billing database) and fed the rest decide byte for
byte the same, and as a store that replayed the whole log. A billing database ahead of its
store (copied later, as a snapshot does) applies each correction once on replay. No NATS
here: the log is handed to the applier as it would read it."""

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

from meterd.billing import Period
from meterd.cluster import ShardApplier
from meterd.cluster._closes import close_message
from meterd.cluster._nats import LogMessage
from meterd.cluster._snapshot import copy_database, copy_store, store_position
from meterd.partitions import encode, shard_files
from meterd.partitions._messages import Correction
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
# An alert the random logs cross: its crossings (ids and delivery bodies) are decided again
# by every replay, and must be the same bytes (protocol.md §4: every attempt of a delivery).
ALERTS = """
[[webhooks]]
name = "hook"
url = "http://127.0.0.1:9/hook"
secret = "whsec-determinism-0123456789"

[[alerts]]
name = "two"
meter = "dyno.seconds"
period = "month"
threshold = "2"
webhook = "hook"
"""
HOUR = 60 * MINUTE
AUTH = [("authorization", f"Bearer {ADMIN}")]

_event = st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from([f"e{n}" for n in range(6)]),  # few ids: re-sends and conflicts
    st.integers(1, 3),  # quantity
    st.one_of(st.integers(0, 3).map(lambda k: T0 + k * MINUTE), st.just(T0 - 3 * DAY)),
)
_correction = st.one_of(
    st.tuples(st.just("adjust"), st.sampled_from(ACCOUNTS), st.integers(1, 5)),
    st.tuples(st.just("void"), st.sampled_from(ACCOUNTS), st.sampled_from(["e0", "e1"])),
)
_log = st.lists(
    st.one_of(
        st.lists(_event, min_size=1, max_size=4),
        st.just(None),  # None: junk
        _correction,
        st.just("close"),  # the month of T0 closed (a second one: found closed)
    ),
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
        elif entry == "close":
            close = close_message(Period.containing(T0), SHARD, by="alice", at=NOW, node="n1")
            data = encode(close)
        elif isinstance(entry, tuple):
            data = encode(correction(number, *entry))
        else:
            events = [ev(i, id, account, q, at) for i, (account, id, q, at) in enumerate(entry)]
            piece = a_slice(number, SHARD, events)
            piece = msgspec.structs.replace(piece, received_at=NOW + number * HOUR)
            data = encode(piece)
        out.append(LogMessage(seq, f"meterd.log.{SHARD}", data, f"id-{number}", NOW + number))
    return out


def correction(number: int, kind: str, account: str, what: Any) -> Correction:
    """A correction as a node publishes it: an adjustment of ``what`` units (a credit), or
    a void of event ``what``; stamped at a time of its own."""
    common = Correction(
        id=f"correction-{number}",
        shard=SHARD,
        kind=kind,
        account=account,
        by="carol",
        reason=f"ticket {number}",
        at=NOW + number * HOUR,
        meter="dyno.seconds",
        dims=["web"],
    )
    if kind == "adjust":
        return msgspec.structs.replace(
            common, start=T0, end=T0 + MINUTE, direction="credit", quantity=str(what)
        )
    return msgspec.structs.replace(common, event_id=what, time=T0, quantity="1")


def billing_rows(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    # restatements too: made from the log (a correction's, or a slice's late events), each
    # is stamped with the message's time, not the applying node's clock
    return {
        table: rows(path, f"SELECT * FROM {table} ORDER BY 1")
        for table in (
            "adjustments",
            "voids",
            "log_corrections",
            "closures",
            "closed_invoices",
            "restatements",
        )
    }


async def replay(
    folder: Path,
    log: list[LogMessage],
    *,
    snapshot: Path | None = None,
    billing: Path | None = None,
) -> dict[str, Any]:
    """``log`` applied to a fresh store, or to one restored from ``snapshot`` (and its
    billing database from ``billing``)."""
    config = write_config(folder, cluster=ALERTS)
    files = shard_files(config, SHARD)
    if snapshot is not None:
        files.store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot, files.store)
    if billing is not None:
        files.billing.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(billing, files.billing)
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
            body = msgspec.json.decode(answer["body"])
            # an account with no event is unknown to the store, or known only to the
            # running process when a rating (a close) woke its actor: no rows either way
            windows[account] = body.get("rows", []) if answer["status"] == 200 else body
            if answer["status"] == 404:
                assert body["error"]["code"] == "unknown_account", body
                windows[account] = []
        store = cell.store_path
    return {
        # Each crossing, byte for byte; not their ``seq``: the accounts' actors checkpoint
        # in their own time, so the order across accounts is not the log's.
        "outbox": rows(
            store,
            "SELECT id, account, alert, webhook, meter, period, event_id, batch_id, body,"
            " created_at FROM alert_outbox ORDER BY id",
        ),
        "verdicts": verdicts,
        "windows": windows,
        "journal": rows(store, "SELECT * FROM event_batches ORDER BY batch_id"),
        "audit": rows(store, "SELECT * FROM audit ORDER BY audit_id"),
        "position": rows(store, "SELECT * FROM log_positions"),
        "billing": billing_rows(files.billing),
        "applied_corrections": applier.corrections,
        "applied_closes": applier.closes,
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
    assert len(first["verdicts"]) == sum(1 for entry in log if isinstance(entry, list))
    corrections = [entry for entry in log if isinstance(entry, tuple)]
    assert first["applied_corrections"] == len(corrections)
    billing = first["billing"]
    assert len(billing["adjustments"]) == sum(1 for c in corrections if c[0] == "adjust")
    voided = {(c[1], c[2]) for c in corrections if c[0] == "void"}
    assert len(billing["voids"]) == len(voided)  # a second void of one event is refused
    assert len(billing["log_corrections"]) == len(billing["adjustments"]) + len(voided)
    closes = [n for n, entry in enumerate(read) if log[n] == "close"]
    assert first["applied_closes"] == len(closes)
    # the month is fixed once, at the first close of the log
    assert [(c[0], c[-1]) for c in billing["closures"]] == (
        [(str(Period.containing(T0)), read[closes[0]].seq)] if closes else []
    )


async def snapshot_after(folder: Path, log: list[LogMessage]) -> Path:
    """A snapshot (the backup API's copy) of a store that applied ``log``; its billing
    database's copy is beside it (``.billing``)."""
    await replay(folder, log)
    config = write_config(folder, cluster=ALERTS)
    target = folder / "snapshot.sqlite3"
    copy_store(shard_files(config, SHARD).store, target, SHARD)
    billing = shard_files(config, SHARD).billing
    if billing.exists():
        copy_database(billing, folder / "snapshot.billing")
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
        billing = root / "s" / "snapshot.billing"
        bill = billing if billing.exists() else None
        first = trio.run(partial(replay, root / "a", tail, snapshot=snapshot, billing=bill))
        second = trio.run(partial(replay, root / "b", tail, snapshot=snapshot, billing=bill))
        whole = trio.run(replay, root / "w", read)
        # the store of the prefix with the billing database of the whole log (a snapshot's
        # billing copy is made after its store copy): each correction is found, not redone
        ahead_folder = root / "ahead"
        trio.run(snapshot_after, ahead_folder, read)
        ahead_billing = ahead_folder / "snapshot.billing"
        ahead = trio.run(
            partial(
                replay,
                root / "x",
                tail,
                snapshot=snapshot,
                billing=ahead_billing if ahead_billing.exists() else None,
            )
        )
    assert first == second
    assert first["billing"] == whole["billing"]
    assert ahead["billing"] == whole["billing"]
    assert first["position"] == whole["position"]
    # ... and the same as a store that replayed the whole log: the windows, and the
    # verdicts of the slices after the snapshot
    assert first["windows"] == whole["windows"]
    assert first["verdicts"] == whole["verdicts"][len(whole["verdicts"]) - len(first["verdicts"]) :]
    assert len(first["verdicts"]) == sum(1 for entry in log[cut:] if isinstance(entry, list))
