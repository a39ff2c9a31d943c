"""Hypothesis: for random streams (duplicates, id conflicts, late events, out-of-order
times) with checkpoints, crashes and hibernations in between, the crossings in the outbox
are exactly a model's: per (rule, account, month), the first unique event in counting
order that takes the month's value (sum, unique_count, max) to the threshold."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.accounts.aggregate import State, new_state
from meterd.alerts._eval import month_of
from meterd.model import DAY_MS, Event
from tests.examples import examples

from .helpers import DYNO, METERS, NOW, PEAK, USERS, book, outbox, rule, running

RULES = [
    rule("dyno-5", "5"),
    rule("dyno-12.5", "12.5"),
    rule("users-3", "3", meter=USERS.name),
    rule("peak-100", "100", meter=PEAK.name),
]
OCT = NOW - 45 * DAY_MS  # 2026-10-16: a late month
NOV = NOW - 20 * DAY_MS


def _event(account: str, n: int, meter: int, q: int, day: int, user: int) -> Event:
    m = (DYNO, USERS, PEAK)[meter]
    base = OCT if day < 0 else NOV
    props: tuple[tuple[str, str], ...] = (("size", "std"),)
    if m is USERS:
        props = (("user", f"u{user}"),)
    return Event(f"e{n}", account, m.name, Decimal(q) / 4, base + abs(day) * 3_600_000 * 7, props)


events = st.builds(
    _event,
    st.sampled_from(["acme", "beta"]),
    st.integers(0, 30),  # few ids: duplicates and id conflicts
    st.integers(0, 2),
    st.integers(0, 200),
    st.integers(-8, 8),  # negative: October (late), in any order
    st.integers(0, 5),
)
ops = st.lists(
    st.one_of(
        st.lists(events, min_size=1, max_size=6).map(lambda b: ("ingest", b)),
        st.sampled_from([("checkpoint", None), ("crash", None), ("hibernate", None)]),
    ),
    max_size=25,
)


def model(accepted: list[Event]) -> dict[tuple[str, str, str], str]:
    """(alert, account, period) -> the id of the event that crossed."""
    states: dict[tuple[str, str, tuple[int, int]], State] = {}
    out: dict[tuple[str, str, str], str] = {}
    for event in accepted:
        month = month_of(event.time)
        key = (event.account, event.meter, month)
        state = states.setdefault(key, new_state(METERS[event.meter]))
        state.add(event)
        if state.empty:
            continue
        for r in RULES:
            label = "{:04d}-{:02d}".format(*month)
            crossing = (r.name, event.account, label)
            assert r.threshold is not None
            if r.meter == event.meter and crossing not in out and state.value() >= r.threshold:
                out[crossing] = event.id
    return out


async def _run(path: Path, steps: list[tuple[str, Any]]) -> list[Event]:
    accepted: list[Event] = []
    async with running(path, book(*RULES)) as accounts:
        for kind, batch in steps:
            if kind == "ingest":
                by_account: dict[str, list[Event]] = {}
                for e in batch:
                    by_account.setdefault(e.account, []).append(e)
                for account, mine in by_account.items():
                    verdict = await accounts.ingest(account, mine)
                    accepted += [mine[i] for i in verdict.accepted]
                continue
            for account in ("acme", "beta"):
                actor = accounts.registry.whereis(account)
                if actor is None:
                    continue
                if kind == "checkpoint":
                    await accounts.checkpoint(account)
                elif kind == "crash":
                    monitor = actor.monitor()
                    await actor.cast(("crash", "drill"))
                    await monitor.wait()
                else:  # an actor that is not idle declines: do not wait for it to stop
                    await actor.cast(("hibernate",))
        for account in ("acme", "beta"):
            await accounts.checkpoint(account)
    return accepted


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_crossings_equal_the_model_of_the_unique_events(steps: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "meterd.sqlite3"
        accepted = trio.run(_run, path, steps)
        seen: set[tuple[str, str]] = set()
        for e in accepted:  # the writer kept the first copy of each id
            assert (e.account, e.id) not in seen
            seen.add((e.account, e.id))
        rows = outbox(path) if accepted else []
        got = {(r.alert, r.account, r.period): r.event_id for r in rows}
        assert got == model(accepted)
        assert len({r.id for r in rows}) == len(rows)
