"""The writer's exact dedupe, and batch operations deciding like one append per account."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.model import Event
from meterd.store import (
    AppendResult,
    Writer,
    codec,
    schema,
)
from meterd.store import _group as store_group
from meterd.store import _writer as store_writer
from meterd.store._ops import BatchAppend
from tests.examples import examples
from tests.store.helpers import (
    Collector,
    dedupe_row_keys_by_method,
    ev,
    rows,
    running,
    store_config,
)

# -- dedupe -------------------------------------------------------------------------------


async def test_dedupe_across_groups_and_id_conflicts(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config(commit_interval=0))
    async with running(writer):
        first = await writer.append("acme", [ev("e1"), ev("e2", quantity=Decimal("1.50"))])
        assert first == AppendResult(1, [0, 1], [], [])
        again = await writer.append(
            "acme",
            [
                ev("e1"),
                ev("e2", quantity=Decimal("1.5")),  # the same value: a genuine re-send
                ev("e1", time=120_000),  # same id, other time: conflict
                ev("e3"),
            ],
        )
        assert again == AppendResult(2, [3], [0, 1], [2])
        # The same id in another account is another event.
        other = await writer.append("globex", [ev("e1", "globex")])
        assert other.accepted == [0]
        # A conflict replaced nothing: the original is still what counts.
        assert (await writer.append("acme", [ev("e1")])).duplicates == [0]
        assert (await writer.append("acme", [ev("e1", time=120_000)])).conflicts == [0]
        assert writer.stats.events_accepted == 4
    assert rows(writer.path, "SELECT count(*) FROM dedupe") == [(4,)]


async def test_dedupe_within_one_call_and_within_one_group(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config(commit_interval=0))
    async with running(writer):
        one_call = await writer.append(
            "acme", [ev("x"), ev("x"), ev("x", quantity=2), ev("y"), ev("x", quantity=2)]
        )
        assert one_call == AppendResult(1, [0, 3], [1], [2, 4])

        a, b, c = Collector(), Collector(), Collector()
        writer.submit("acme", [ev("z1"), ev("z2")], a)
        writer.submit("acme", [ev("z2"), ev("z1", quantity=9), ev("z3")], b)
        writer.submit("acme", [ev("z3"), ev("x")], c)
        commits = writer.stats.commits
        await writer.barrier()
        assert writer.stats.commits == commits + 1  # one group
        assert a.result() == AppendResult(2, [0, 1], [], [])
        assert b.result() == AppendResult(3, [2], [0], [1])
        assert c.result() == AppendResult(None, [], [0, 1], [])
        payload = rows(writer.path, "SELECT payload FROM event_batches WHERE batch_id = 3")
        assert [e.id for e in codec.decode_batch(payload[0][0], "acme")] == ["z3"]


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config())) as writer:
        assert (await writer.append("acme", [ev("r1"), ev("r2")])).accepted == [0, 1]
    async with running(Writer(path, store_config())) as writer:
        result = await writer.append("acme", [ev("r1"), ev("r2", quantity=5), ev("r3")])
        assert result == AppendResult(2, [2], [0], [1])


async def test_dedupe_is_exact_when_every_key_collides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every (account, id) gets the same 63-bit dedupe row key.
    monkeypatch.setattr(Event, "dedupe_key", lambda self: 12345)
    monkeypatch.setattr(schema, "account_bucket", lambda account: 0)
    monkeypatch.setattr(schema, "dedupe_row_keys", dedupe_row_keys_by_method)
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        first = await writer.append("acme", [ev("k1"), ev("k2"), ev("k2"), ev("k3", quantity=3)])
        assert first == AppendResult(1, [0, 1, 3], [2], [])
        other = await writer.append("globex", [ev("k1", "globex", quantity=8)])
        assert other.accepted == [0]  # same id, other account: not a conflict
        grouped = Collector(), Collector()
        writer.submit("acme", [ev("k4"), ev("k1")], grouped[0])
        writer.submit("acme", [ev("k4"), ev("k5"), ev("k3", quantity=4)], grouped[1])
        await writer.barrier()
        assert grouped[0].result() == AppendResult(3, [0], [1], [])
        assert grouped[1].result() == AppendResult(4, [1], [0], [2])
    assert rows(path, "SELECT key FROM dedupe") == [(12345,)]
    assert rows(path, "SELECT count(*) FROM dedupe_overflow") == [(5,)]  # all but acme k1
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        again = await writer.append(
            "acme",
            [ev("k1"), ev("k2", quantity=2), ev("k3", quantity=3), ev("k5"), ev("k6")],
        )
        assert again == AppendResult(5, [4], [0, 2, 3], [1])
        assert (await writer.append("globex", [ev("k1", "globex", quantity=8)])).duplicates == [0]
        assert (await writer.append("globex", [ev("k1", "globex")])).conflicts == [0]


_ACCOUNTS = ("acme", "globex", "initech")
_batch_groups = st.lists(
    st.lists(
        st.tuples(st.sampled_from(_ACCOUNTS), st.sampled_from("abcde"), st.integers(1, 2)),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=6,
)


def _grouped(batch: list[tuple[str, str, int]]) -> list[tuple[str, list[Event]]]:
    groups: dict[str, list[Event]] = {}
    for account, event_id, quantity in batch:
        groups.setdefault(account, []).append(ev(event_id, account, quantity=quantity))
    return list(groups.items())


async def _verdicts_and_rows(
    path: Path, batches: list[list[tuple[str, list[Event]]]], one_operation: bool
) -> tuple[list[AppendResult], list[tuple[Any, ...]]]:
    collected: list[Collector] = []
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        for index, groups in enumerate(batches):
            if one_operation:
                whole = Collector()
                writer.submit_batch(groups, whole)
                collected.append(whole)
            else:
                for account, events in groups:
                    collected.append(Collector())
                    writer.submit(account, events, collected[-1])
            if index % 2:
                await writer.barrier()  # some batches in one group, some in their own
        await writer.barrier()
    results: list[AppendResult] = []
    for collector in collected:
        [outcome] = collector.outcomes
        if isinstance(outcome, list):
            results.extend(outcome)
        else:
            assert isinstance(outcome, AppendResult), outcome
            results.append(outcome)
    stored = rows(
        path,
        "SELECT b.batch_id, b.account, b.count, b.payload FROM event_batches b ORDER BY batch_id",
    ) + rows(path, "SELECT 'overflow', account, event_id, fingerprint FROM dedupe_overflow")
    stored += rows(path, "SELECT 'audit', account, event_id, kind, code, batch_id FROM audit")
    return results, sorted(stored, key=repr)


@settings(max_examples=examples(40), deadline=None)
@given(batches=_batch_groups, collide=st.booleans())
def test_a_batch_operation_decides_exactly_like_one_append_per_account(
    tmp_path_factory: pytest.TempPathFactory, batches: list[Any], collide: bool
) -> None:
    """``submit_batch`` (one operation, one lookup, deferred inserts) gives the verdicts and
    the stored rows of one ``submit`` per group, in the same order: with real keys, and
    when every (account, id) shares one dedupe key (collisions across the accounts of one
    batch go to the overflow table)."""
    grouped = [_grouped(batch) for batch in batches]
    where = tmp_path_factory.mktemp("batch")
    with pytest.MonkeyPatch.context() as patch:
        if collide:
            patch.setattr(Event, "dedupe_key", lambda self: 777)
            patch.setattr(schema, "account_bucket", lambda account: 0)
            patch.setattr(schema, "dedupe_row_keys", dedupe_row_keys_by_method)
        one = trio.run(_verdicts_and_rows, where / "one.sqlite3", grouped, True)
        each = trio.run(_verdicts_and_rows, where / "each.sqlite3", grouped, False)
    assert one == each
    # The audit trail holds exactly the verdicts' duplicates and conflicts, each pointing
    # at the journal batch that holds the counted copy of its (account, id).
    results, stored = one
    flat = [group for groups in grouped for group in groups]
    wanted = sorted(
        (account, events[index].id, kind)
        for (account, events), result in zip(flat, results, strict=True)
        for kind, indexes in (("duplicate", result.duplicates), ("rejected", result.conflicts))
        for index in indexes
    )
    audit = [row[1:] for row in stored if row[0] == "audit"]
    assert sorted((account, event_id, kind) for account, event_id, kind, *_ in audit) == wanted
    holding = {
        (row[0], row[1]): set(codec.batch_event_ids(row[3]))
        for row in stored
        if isinstance(row[0], int)
    }
    for account, event_id, kind, code, batch_id in audit:
        assert code == (None if kind == "duplicate" else "id_conflict")
        assert event_id in holding[(batch_id, account)]


async def test_the_writers_account_shortcuts_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_group, "ACCOUNT_CACHE", 2)
    monkeypatch.setattr(store_writer, "ACCOUNT_CACHE", 2)
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        for attempt in range(3):
            for n in range(5):
                account = f"acct{n}"
                result = await writer.append(account, [ev(f"e{attempt}", account)])
                assert result.accepted == [0]
            assert len(writer._groups.buckets) <= 3
            assert len(writer._groups.known_accounts) <= 3
        again = await writer.append("acct0", [ev("e0", "acct0"), ev("e9", "acct0")])
        assert again.duplicates == [0]  # dedupe does not depend on the shortcuts
    assert rows(path, "SELECT count(*) FROM accounts") == [(5,)]


async def test_a_batch_operation_checks_its_groups(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config())
    with pytest.raises(ValueError, match="of account 'globex', submitted for account 'acme'"):
        writer.submit_batch([("acme", [ev("a"), ev("b", "globex")])], Collector())
    with pytest.raises(ValueError, match="account 'acme' has two groups"):
        writer.submit_batch([("acme", [ev("a")]), ("acme", [ev("b")])], Collector())
    assert writer.pending == 0


def _group_error(groups: list[tuple[str, list[Event]]]) -> str | None:
    """The reference check of ``submit_batch``: the first problem, group by group."""
    seen: set[str] = set()
    for account, events in groups:
        if account in seen:
            return f"account {account!r} has two groups in one batch"
        seen.add(account)
        for index, event in enumerate(events):
            if event.account != account:
                return (
                    f"event {index} (id {event.id!r}) is of account {event.account!r},"
                    f" submitted for account {account!r}"
                )
    return None


_accounts = st.sampled_from(["acme", "globex", "initech"])


@settings(max_examples=examples(300), deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            _accounts,
            st.lists(st.builds(ev, st.sampled_from(["a", "b", "c"]), _accounts), max_size=3),
        ),
        max_size=4,
    )
)
def test_a_batch_operation_checks_its_groups_like_the_reference(
    groups: list[tuple[str, list[Event]]],
) -> None:
    """``submit_batch``'s whole-batch check refuses exactly what the group-by-group check
    refuses, with its message, and queues nothing then; otherwise it queues the groups as
    given."""
    writer = Writer("never-opened.sqlite3", store_config())
    want = _group_error(groups)
    if want is None:
        writer.submit_batch(groups, Collector())
        [(op, _reply)] = writer._queue
        assert isinstance(op, BatchAppend)
        assert op.groups == tuple((account, tuple(events)) for account, events in groups)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            writer.submit_batch(groups, Collector())
        assert writer.pending == 0


def test_dedupe_row_keys_are_63_bits_and_grouped_by_account() -> None:
    keys = {
        account: [
            schema.dedupe_row_key(schema.account_bucket(account), ev(f"{i}", account))
            for i in range(50)
        ]
        for account in ("acme", "globex")
    }
    for account_keys in keys.values():
        assert all(0 <= key < 2**63 for key in account_keys)
        assert len({key >> 40 for key in account_keys}) == 1  # neighbours in the B-tree
        assert len(set(account_keys)) == 50
    assert keys["acme"][0] >> 40 != keys["globex"][0] >> 40


async def test_submit_refuses_events_of_another_account(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config())
    with pytest.raises(ValueError, match="of account 'globex', submitted for account 'acme'"):
        writer.submit("acme", [ev("a"), ev("b", "globex")], Collector())
    assert writer.pending == 0
