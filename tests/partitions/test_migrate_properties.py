"""Property: for random event streams and account ids, moving a store into shards (any
count / shard_size) and back changes no account's usage and loses or doubles no row."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.accounts.service import running_accounts
from meterd.model import Event
from meterd.partitions import shard_of
from meterd.partitions._migrate import found_layout, migrate
from tests.examples import examples
from tests.partitions.migrate_data import (
    DYNO,
    METERS,
    T0,
    accounts_in,
    contents,
    usage,
    write_config,
)

ACCOUNTS = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12),
    min_size=1,
    max_size=6,
    unique=True,
)
LAYOUTS = st.sampled_from([(1, 1), (16, 4), (64, 16), (256, 16), (256, 64)])


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    accounts = draw(ACCOUNTS)
    n = draw(st.integers(1, 40))
    events = []
    for i in range(n):
        account = draw(st.sampled_from(accounts))
        quantity = draw(
            st.one_of(
                st.integers(0, 10**12),
                st.decimals(0, 10**6, places=3, allow_nan=False, allow_infinity=False),
            )
        )
        hour = draw(st.integers(0, 24 * 20))
        size = draw(st.sampled_from(["std", "perf"]))
        events.append(
            Event(
                f"e{i}",
                account,
                DYNO.name,
                Decimal(quantity),
                T0 + hour * 3_600_000,
                (("size", size),),
            )
        )
    return events


async def _write(path: Path, events: list[Event]) -> None:
    async with running_accounts(path, METERS) as layer:
        for event in events:
            await layer.ingest(event.account, [event])


def check_round_trip(events: list[Event], layout: tuple[int, int], owners: int) -> None:
    accounts = sorted({e.account for e in events})
    owners = min(owners, layout[0] // layout[1])  # an owner holds whole shards
    with tempfile.TemporaryDirectory() as directory:
        where = Path(directory)
        single = write_config(where, 0)
        trio.run(_write, single.store_path, events)
        before_rows = contents(single)
        before = trio.run(usage, single, single.store_path, accounts)
        sharded = write_config(where, owners, *layout)
        migrate(sharded)
        after: dict[str, object] = {}
        for files in found_layout(sharded).files:
            held = sorted(accounts_in(files.store))
            assert all(shard_of(a, sharded.partitions) == files.shard for a in held)
            after |= trio.run(usage, sharded, files.store, held)
        assert after == before
        back = write_config(where, 0)
        migrate(back)
        assert contents(back) == before_rows
        assert trio.run(usage, back, back.store_path, accounts) == before


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), LAYOUTS, st.integers(1, 3))
def test_moving_into_shards_and_back_changes_no_usage(
    events: list[Event], layout: tuple[int, int], owners: int
) -> None:
    check_round_trip(events, layout, owners)


@pytest.mark.slow
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), LAYOUTS, st.integers(1, 3))
def test_moving_into_shards_and_back_changes_no_usage_many(
    events: list[Event], layout: tuple[int, int], owners: int
) -> None:
    check_round_trip(events, layout, owners)
