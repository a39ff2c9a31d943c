"""Hypothesis: a rule of one account created, and perhaps deleted, in the middle of a
random stream (with hibernations in between) crosses exactly where a model says: on the
first event counted after its creation (and before its deletion) after which the month's
value is at or above its threshold, even when the value was there already when it was
made (docs/alerts.md, "Rules of one account"). Sum and max meters."""

from __future__ import annotations

import sqlite3
import tempfile
from decimal import Decimal
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.alerts import AlertRule
from meterd.alerts._rules import rule_text
from meterd.alerts._runtime import AlertBook
from meterd.model import DAY_MS, Event
from tests.examples import examples

from .helpers import DYNO, METERS, NOW, PEAK, T0, outbox, running

steps = st.lists(
    st.tuples(st.sampled_from(["event", "hibernate"]), st.integers(0, 8)),
    min_size=1,
    max_size=25,
)


def _model(values: list[int], fold: str, threshold: int, made: int, gone: int) -> int | None:
    """The index of the crossing event among ``values`` (counting order), or None."""
    total = 0
    for index, q in enumerate(values):
        total = total + q if fold == "sum" else max(total, q)
        if made <= index < gone and total >= threshold:
            return index
    return None


async def _run(
    path: Path, plan: list[tuple[str, int]], rule: AlertRule, made: int, gone: int | None
) -> list[str]:
    """Apply ``plan``: the rule is created before the ``made``-th event and deleted before
    the ``gone``-th. The ids of the events, in counting order."""
    alerts = AlertBook((), METERS, history_ms=35 * DAY_MS, clock_ms=lambda: NOW, webhooks=["hook"])
    ids: list[str] = []
    async with running(path, alerts, idle_timeout=3600) as accounts:
        for kind, q in plan:
            if kind == "hibernate":
                actor = accounts.registry.whereis("acme")
                if actor is not None:
                    await actor.cast(("hibernate",))
                continue
            if len(ids) == made:
                assert await accounts.change_rule("acme", rule.name, "test", rule_text(rule))
            if gone is not None and len(ids) == gone:
                assert await accounts.change_rule("acme", rule.name, "test", None)
            event_id = f"e{len(ids)}"
            meter = rule.meter
            props = (("size", "std"),) if meter == DYNO.name else ()
            event = Event(event_id, "acme", meter, q, T0 + len(ids) * 60_000, props)
            await accounts.ingest("acme", [event])
            ids.append(event_id)
        if ids:
            await accounts.checkpoint("acme")
    return ids


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=steps,
    fold=st.sampled_from(["sum", "max"]),
    threshold=st.integers(1, 20),
    made=st.integers(0, 12),
    gone_after=st.one_of(st.none(), st.integers(0, 12)),
)
def test_a_rule_made_mid_stream_crosses_where_the_model_says(
    plan: list[tuple[str, int]], fold: str, threshold: int, made: int, gone_after: int | None
) -> None:
    meter = DYNO if fold == "sum" else PEAK
    rule = AlertRule(
        name="own", meter=meter.name, webhook="hook", threshold=Decimal(threshold),
        accounts=frozenset({"acme"}),
    )  # fmt: skip
    gone = None if gone_after is None else made + gone_after
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "meterd.sqlite3"
        ids = trio.run(_run, path, plan, rule, made, gone)
        values = [q for kind, q in plan if kind == "event"]
        index = _model(values, fold, threshold, made, len(values) if gone is None else gone)
        got = [(r.alert, r.event_id) for r in outbox(path)] if ids else []
        assert got == ([] if index is None else [("own", ids[index])])


async def test_a_rule_made_while_events_stream_in_crosses_where_the_journal_says(
    tmp_path: Path,
) -> None:
    """Events committed concurrently with the rule's creation: the crossing is the first
    event of a journal batch after the rule's ``armed_after`` that takes the month's sum to
    the threshold (usage already above it counts), whatever the actor had applied."""
    path = tmp_path / "meterd.sqlite3"
    alerts = AlertBook((), METERS, history_ms=35 * DAY_MS, clock_ms=lambda: NOW, webhooks=["hook"])
    rule = AlertRule(
        name="own", meter=DYNO.name, webhook="hook", threshold=Decimal(10),
        accounts=frozenset({"acme"}),
    )  # fmt: skip
    async with running(path, alerts, idle_timeout=3600) as accounts:
        await accounts.ingest("acme", [Event("e0", "acme", DYNO.name, 1, T0, (("size", "s"),))])
        made = trio.Event()

        async def stream() -> None:
            for n in range(1, 40):
                e = Event(f"e{n}", "acme", DYNO.name, 1, T0 + n * 60_000, (("size", "s"),))
                await accounts.ingest("acme", [e])
                if n == 5:
                    made.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            await made.wait()
            assert await accounts.change_rule("acme", "own", "test", rule_text(rule))
        await accounts.checkpoint("acme")
    conn = sqlite3.connect(path)
    try:
        (armed_after,) = conn.execute("SELECT armed_after FROM alert_rules").fetchone()
        batches = conn.execute("SELECT batch_id FROM event_batches ORDER BY batch_id").fetchall()
    finally:
        conn.close()
    # one event of quantity 1 per batch, in journal order: the running sum is the position
    expected = next(
        f"e{i}" for i, (batch_id,) in enumerate(batches) if batch_id > armed_after and i + 1 >= 10
    )
    assert armed_after >= 6
    assert [(r.alert, r.event_id) for r in outbox(path)] == [("own", expected)]
