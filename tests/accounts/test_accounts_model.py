"""Property: whatever the stream, crashes and hibernations, usage equals a direct model.

Random streams with duplicates, id conflicts, out-of-order and late times, every
aggregation and dimensions go through the real accounts layer and store; actors
are crashed and hibernated at random points. Every window of every granularity,
grouped by every dimension or not, must equal a model computed directly from the
unique events (first accepted occurrence of each ``(account, id)`` wins).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.model import (
    DAY_MS,
    MINUTE_MS,
    Aggregation,
    Event,
    Meter,
    Window,
    canonical_quantity,
)
from tests.accounts.test_accounts import running
from tests.examples import examples

METERS = {
    m.name: m
    for m in (
        Meter("dyno.seconds", Aggregation.SUM, ("size", "app")),
        Meter("router.requests", Aggregation.COUNT, ("app",)),
        Meter("pg.bytes", Aggregation.MAX, ("db",)),
        Meter("pg.low", Aggregation.MIN),
        Meter("plan", Aggregation.LATEST),
        Meter("users", Aggregation.UNIQUE_COUNT, ("app",), "user"),
    )
}
T0 = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS
ACCOUNTS = ("acme", "globex")

quantities = st.one_of(
    st.integers(0, 10**6),
    st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False),
)


@st.composite
def events(draw: st.DrawFn, account: str) -> Event:
    meter = METERS[draw(st.sampled_from(sorted(METERS)))]
    props = {
        "size": draw(st.sampled_from(["std-1x", "perf-l"])),
        "app": draw(st.sampled_from(["web", "api", "worker"])),
        "db": draw(st.sampled_from(["main", "replica"])),
        "user": draw(st.sampled_from(["u1", "u2", "u3", "u4"])),
    }
    if draw(st.booleans()):
        props.pop(draw(st.sampled_from(sorted(props))))  # a missing dimension/property
    minute = draw(st.integers(-60, 2 * 24 * 60))  # late, out of order, across days
    quantity = 1 if meter.aggregation is Aggregation.COUNT else draw(quantities)
    return Event(
        id=f"e{draw(st.integers(0, 25))}",  # a small id pool: duplicates and conflicts
        account=account,
        meter=meter.name,
        quantity=quantity,
        time=T0 + minute * MINUTE_MS + draw(st.sampled_from([0, 1, 59_999])),
        properties=tuple(sorted(props.items())),
    )


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 12))):
        account = draw(st.sampled_from(ACCOUNTS))
        kind = draw(st.sampled_from(["ingest", "ingest", "ingest", "crash", "hibernate", "check"]))
        if kind == "ingest":
            out.append(("ingest", account, draw(st.lists(events(account), min_size=1, max_size=8))))
        else:
            out.append((kind, account))
    return out


@dataclass
class Model:
    accepted: dict[tuple[str, str], Event]

    def verdict(self, batch: list[Event]) -> tuple[list[int], list[int], list[int]]:
        accepted, duplicates, conflicts = [], [], []
        for i, event in enumerate(batch):
            key = (event.account, event.id)
            known = self.accepted.get(key)
            if known is None:
                self.accepted[key] = event
                accepted.append(i)
            elif known.fingerprint() == event.fingerprint():
                duplicates.append(i)
            else:
                conflicts.append(i)
        return accepted, duplicates, conflicts

    def rows(
        self, account: str, meter: Meter, window: Window, group_by: str | None
    ) -> list[tuple[int, str, dict[str, str] | None]]:
        buckets: dict[tuple[int, str | None], list[Event]] = defaultdict(list)
        for (acct, _), event in self.accepted.items():
            if acct != account or event.meter != meter.name:
                continue
            group = None if group_by is None else (event.property(group_by) or "")
            buckets[(window.align(event.time), group)].append(event)
        rows = []
        for (start, group), bucket in sorted(
            buckets.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        ):
            value = _aggregate(meter, bucket)
            if value is None:
                continue
            rows.append((start, value, None if group_by is None else {group_by: group or ""}))
        return rows


def _aggregate(meter: Meter, bucket: list[Event]) -> str | None:
    agg = meter.aggregation
    if agg is Aggregation.SUM:
        return canonical_quantity(sum((Decimal(e.quantity) for e in bucket), Decimal(0)))
    if agg is Aggregation.COUNT:
        return str(len(bucket))
    if agg is Aggregation.MAX:
        return canonical_quantity(max(Decimal(e.quantity) for e in bucket))
    if agg is Aggregation.MIN:
        return canonical_quantity(min(Decimal(e.quantity) for e in bucket))
    if agg is Aggregation.LATEST:
        return canonical_quantity(Decimal(max(bucket, key=lambda e: (e.time, e.id)).quantity))
    users = {e.property("user") for e in bucket if e.property("user") is not None}
    return str(len(users)) if users else None


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps())
def test_usage_equals_model_of_unique_events(script: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_run, Path(tmp), script)


async def _run(tmp: Path, script: list[tuple[Any, ...]]) -> None:
    model = Model({})
    # Crashes are injected at random, many within seconds: a high intensity keeps this
    # test about counting (escalation has tests of its own in tests/supervisors/test_dynamic.py).
    async with running(tmp, meters=METERS, idle_timeout=10**6, max_restarts=10**6) as accounts:
        for step in script:
            kind, account = step[0], step[1]
            ref = accounts.registry.whereis(account)
            if kind == "ingest":
                batch: list[Event] = step[2]
                verdict = await accounts.ingest(account, batch)
                expected = model.verdict(batch)
                got = (
                    sorted(verdict.accepted),
                    sorted(verdict.duplicates),
                    sorted(verdict.conflicts),
                )
                assert got == expected, (batch, got, expected)
            elif ref is not None and kind in ("crash", "hibernate"):
                monitor = ref.monitor()
                await ref.cast(("crash", "test") if kind == "crash" else ("hibernate",))
                exit = await monitor.wait()
                assert exit.kind == ("crash" if kind == "crash" else "normal")
            elif kind == "check":
                await _compare(accounts, model, account)
        for account in ACCOUNTS:
            await _compare(accounts, model, account)


async def _compare(accounts: Any, model: Model, account: str) -> None:
    for meter in METERS.values():
        for window in Window:
            for group_by in (None, *meter.dimensions):
                rows = await accounts.usage(
                    account, meter, T0 - DAY_MS, T0 + 3 * DAY_MS, window, group_by
                )
                got = [(r.start, canonical_quantity(r.value), r.group) for r in rows]
                want = model.rows(account, meter, window, group_by)
                assert got == want, (account, meter.name, window, group_by)
