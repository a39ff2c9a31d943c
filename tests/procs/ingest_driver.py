"""A driver for the kill -9 durability test: the accounts+store layer fed in a real process.

::

    python -m tests.procs.ingest_driver --config PATH --seed S --events N [--start K]
    python -m tests.procs.ingest_driver --config PATH --report [--wake]
    python -m tests.procs.ingest_driver --config PATH --resend-race

Ingest mode builds the daemon's tree (``meterd.app.build(load(config))``), runs its root,
generates the deterministic event stream of ``seed`` (:func:`generate`) and ingests the
events at stream positions ``>= K`` in small batches through ``services.accounts.ingest``
(the daemon's write path, awaited):
one task per (account, lane), all running at once, so several batches of one account are in
flight at any moment. stdout carries only these lines, each flushed at once:

``READY``
    the tree is running; nothing has been sent yet.
``SENT <account> <id> ...``
    printed *before* a batch is handed to ``ingest`` (an upper bound of what may be stored).
``ACK <account> <id> ...``
    printed once ``ingest`` returned: the ids of the batch that were accepted or were
    duplicates (conflicts are left out). The contract under test: each of them is durable.
``DONE``
    every batch was acknowledged; the tree is then stopped and the process exits 0.

``FAIL <account> <id> ... <error>``
    ``ingest`` raised (nothing of the batch is acknowledged).

With ``--batch-path`` the batches go through ``services.accounts.submit`` instead, the path
the websocket server uses (one store-writer operation per producer batch, acknowledged at
commit, applied by the actors after): a combiner task joins the batches that are waiting, of
distinct accounts (up to 8), into one multi-account batch, and each lane's ``ACK`` line is
printed once that batch's commit is reported.

Resend-race mode (``--resend-race``) wakes account ``acme``, prints ``READY``, waits for a
line on stdin, then ingests one event from two producers at once (a producer re-sending a
batch it has no ack for yet) and prints an ``ACK`` or ``FAIL`` line for each.

Report mode prints one JSON document: the usage of every (account, meter) of the stream,
per hour and per day, overall and grouped by each dimension, read through
``services.accounts.usage``, then exits. With ``--wake`` each account's actor is started
(and so recovers from the journal) before it is queried.

Logs go to stderr (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeAlias

import trio

from meterd.accounts.aggregate import UsageRow
from meterd.app import Services, build
from meterd.config import load
from meterd.logs import configure
from meterd.model import DAY_MS, HOUR_MS, MINUTE_MS, Event, Meter, Window, canonical_quantity

ACCOUNTS = ("acme", "globex.io", "user:42@initech", "umbrella-corp")
LANES = 2  # concurrent ingest tasks per account
MAX_BATCH = 6
REPEAT = 0.15  # share of the stream that re-sends an earlier (account, id)
CONFLICT = 0.2  # share of those re-sends that change the event (an id_conflict)

# The meters of the shipped config.toml, one per aggregation kind the stream exercises.
SUM_METER = "dyno.seconds"  # sum, decimal quantities, dimensions size and app
COUNT_METER = "router.requests"  # count, dimension app
MAX_METER = "postgres.storage_bytes"  # max, dimension database
UNIQUE_METER = "api.active_users"  # unique_count of property user
METERS = (SUM_METER, COUNT_METER, MAX_METER, UNIQUE_METER)

# 22:00 UTC on some day in 2026: the stream spans four hours across a day boundary.
T0 = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS + 22 * HOUR_MS
SPAN_MS = 4 * HOUR_MS
REPORT_FROM = T0 - T0 % DAY_MS
REPORT_TO = REPORT_FROM + 3 * DAY_MS
WINDOWS = (Window.HOUR, Window.DAY)

Key: TypeAlias = tuple[str, str]
"""``(account, id)``."""


@dataclass(frozen=True, slots=True)
class Planned:
    """One event of the stream: its position, the lane that sends it, the event."""

    pos: int
    lane: int
    event: Event

    @property
    def key(self) -> Key:
        return (self.event.account, self.event.id)


def _props(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def _new_event(rng: random.Random, account: str, id: str) -> Event:
    meter = rng.choice(METERS)
    time = T0 + rng.randrange(SPAN_MS)
    app = rng.choice(("web", "worker", "api"))
    quantity: int | Decimal
    if meter == SUM_METER:
        props = _props(size=rng.choice(("std-1x", "perf-m")), app=app)
        if rng.random() < 0.1:
            props = _props(size=rng.choice(("std-1x", "perf-m")))  # no app: dimension ""
        quantity = (
            rng.randrange(0, 4000)
            if rng.random() < 0.2
            else Decimal(rng.randrange(0, 3_600_000)).scaleb(-3)  # seconds, 3 decimals
        )
    elif meter == COUNT_METER:
        props, quantity = _props(app=app, path=rng.choice(("/", "/api", "/login"))), 1
    elif meter == MAX_METER:
        props = _props(database=rng.choice(("db-main", "db-replica")))
        quantity = rng.randrange(10**6, 10**12)
        if rng.random() < 0.2:
            quantity = Decimal(quantity) + Decimal("0.5")
    else:
        props, quantity = _props(user=f"u{rng.randrange(40)}", region=rng.choice("ab")), 1
    return Event(id, account, meter, quantity, time, props)


def generate(seed: int, n: int, *, mix_lanes: bool = False) -> list[Planned]:
    """The stream of ``seed``: ``n`` events, some of them re-sends of earlier ones.

    Ids count per account (``e0``, ``e1``, ... in every account), so equal ids of different
    accounts are different events. A re-send repeats an earlier event exactly (a duplicate)
    or changes its time (an ``id_conflict``: the first occurrence wins). A conflicting
    re-send goes in the lane of the event's first occurrence, after it, so which one wins
    never depends on timing. Exact copies go there too, unless ``mix_lanes``: then they may
    race their original in another lane.
    """
    rng = random.Random(seed)
    stream: list[Planned] = []
    first: dict[Key, Event] = {}
    first_lane: dict[Key, int] = {}
    next_id = dict.fromkeys(ACCOUNTS, 0)
    for pos in range(n):
        if stream and rng.random() < REPEAT:
            # mostly recent events (likely in flight), sometimes old ones (in the store)
            back = rng.randrange(min(len(stream), 40)) if rng.random() < 0.7 else None
            picked = stream[-1 - back] if back is not None else rng.choice(stream)
            original = first[picked.key]  # re-sends derive from the first occurrence
            lane = first_lane[picked.key]
            if rng.random() < CONFLICT:
                event = replace(original, time=original.time + MINUTE_MS)
            else:
                event = original
                if mix_lanes:
                    lane = rng.randrange(LANES)
            stream.append(Planned(pos, lane, event))
            continue
        account = rng.choice(ACCOUNTS)
        event = _new_event(rng, account, f"e{next_id[account]}")
        next_id[account] += 1
        lane = rng.randrange(LANES)
        first[(account, event.id)] = event
        first_lane[(account, event.id)] = lane
        stream.append(Planned(pos, lane, event))
    return stream


def plan_batches(stream: Sequence[Planned], seed: int, start: int) -> list[list[list[Event]]]:
    """Per (account, lane), its batches in stream order, of the positions ``>= start``.

    Batch boundaries depend on the seed only (not on ``start``).
    """
    rng = random.Random(f"batches-{seed}")
    lanes: dict[tuple[str, int], list[Planned]] = {}
    for planned in stream:
        lanes.setdefault((planned.event.account, planned.lane), []).append(planned)
    plans: list[list[list[Event]]] = []
    for lane_events in lanes.values():
        batches: list[list[Event]] = []
        index = 0
        while index < len(lane_events):
            size = rng.randint(1, MAX_BATCH)
            chunk = [p.event for p in lane_events[index : index + size] if p.pos >= start]
            if chunk:
                batches.append(chunk)
            index += size
        plans.append(batches)
    return plans


def say(*words: str) -> None:
    sys.stdout.write(" ".join(words) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- ingest


async def _produce(services: Services, events: Sequence[Event]) -> None:
    """One producer's batch: ``ingest``, then its ``ACK`` (or ``FAIL``) line."""
    account = events[0].account
    try:
        verdict = await services.accounts.ingest(account, events)
    except Exception as error:
        say("FAIL", account, *(event.id for event in events), type(error).__name__)
        return
    counted = sorted(verdict.accepted + verdict.duplicates)
    say("ACK", account, *(events[index].id for index in counted))


@dataclass
class _Pending:
    """A lane's batch waiting for the combiner (batch-path mode)."""

    events: Sequence[Event]
    done: trio.Event
    outcome: Any = None


Produce: TypeAlias = Any  # async (services, events) -> None


class _Combiner:
    """Joins waiting single-account batches into multi-account ``Accounts.submit`` calls."""

    MAX_GROUPS = 8

    def __init__(self, services: Services) -> None:
        self.services = services
        self.send, self.receive = trio.open_memory_channel[_Pending](1000)

    async def produce(self, services: Services, events: Sequence[Event]) -> None:
        pending = _Pending(events, trio.Event())
        await self.send.send(pending)
        await pending.done.wait()
        account = events[0].account
        outcome = pending.outcome
        if isinstance(outcome, BaseException):
            say("FAIL", account, *(event.id for event in events), type(outcome).__name__)
            return
        counted = sorted(outcome.accepted + outcome.duplicates)
        say("ACK", account, *(events[index].id for index in counted))

    async def run(self) -> None:
        async for first in self.receive:
            batch = [first]
            accounts = {first.events[0].account}
            while len(batch) < self.MAX_GROUPS:
                try:
                    more = self.receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if more.events[0].account in accounts:  # one group per account: next batch
                    self._submit(batch)
                    batch, accounts = [], set()
                batch.append(more)
                accounts.add(more.events[0].account)
            self._submit(batch)
            await trio.lowlevel.checkpoint()

    def _submit(self, batch: list[_Pending]) -> None:
        def done(outcome: Any) -> None:
            for index, pending in enumerate(batch):
                pending.outcome = outcome if isinstance(outcome, BaseException) else outcome[index]
                pending.done.set()

        self.services.accounts.submit([(p.events[0].account, list(p.events)) for p in batch], done)


async def _lane(services: Services, batches: Sequence[Sequence[Event]], produce: Produce) -> None:
    for batch in batches:
        say("SENT", batch[0].account, *(event.id for event in batch))
        await produce(services, batch)


async def ingest(
    config: Path, seed: int, events: int, start: int, mix_lanes: bool, batch_path: bool = False
) -> None:
    plans = plan_batches(generate(seed, events, mix_lanes=mix_lanes), seed, start)
    services = build(load(config))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.root.run)
            produce: Produce = _produce
            if batch_path:
                combiner = _Combiner(services)
                nursery.start_soon(combiner.run)
                produce = combiner.produce
            say("READY")
            async with trio.open_nursery() as lanes:
                for batches in plans:
                    lanes.start_soon(_lane, services, batches, produce)
            say("DONE")
            services.root.stop()
            nursery.cancel_scope.cancel()
    finally:
        await services.store.aclose()


async def resend_race(config: Path) -> None:
    services = build(load(config))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.root.run)
            await services.accounts.ensure_started(ACCOUNTS[0])
            say("READY")
            await trio.to_thread.run_sync(sys.stdin.readline)
            event = Event("e1", ACCOUNTS[0], COUNT_METER, 1, T0, _props(app="web"))
            async with trio.open_nursery() as producers:
                producers.start_soon(_produce, services, [event])
                producers.start_soon(_produce, services, [event])
            say("DONE")
            services.root.stop()
    finally:
        await services.store.aclose()


# --------------------------------------------------------------------------- report


def _dimension_choices(meter: Meter) -> Iterator[str | None]:
    yield None
    yield from meter.dimensions


def _group(row: UsageRow, group_by: str) -> str:
    assert row.group is not None
    return row.group[group_by]


async def report(config: Path, wake: bool) -> dict[str, Any]:
    """The usage of every (account, meter) of the stream, as :func:`main` prints it."""
    settings = load(config)
    services = build(settings)
    usage: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.root.run)
            for account in ACCOUNTS:
                if wake:
                    await services.accounts.ensure_started(account)
                for name in METERS:
                    meter = settings.meters_by_name[name]
                    for window in WINDOWS:
                        for group_by in _dimension_choices(meter):
                            rows = await services.accounts.usage(
                                account, meter, REPORT_FROM, REPORT_TO, window, group_by
                            )
                            usage.append(
                                {
                                    "account": account,
                                    "meter": name,
                                    "window": window.value,
                                    "group_by": group_by,
                                    "rows": [
                                        [
                                            row.start,
                                            canonical_quantity(row.value),
                                            None if group_by is None else _group(row, group_by),
                                        ]
                                        for row in rows
                                    ],
                                }
                            )
            services.root.stop()
    finally:
        await services.store.aclose()
    return {"usage": usage}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.procs.ingest_driver")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0, help="skip stream positions below this")
    parser.add_argument("--mix-lanes", action="store_true", help="let duplicates race")
    parser.add_argument("--report", action="store_true", help="print the usage as JSON, exit")
    parser.add_argument("--wake", action="store_true", help="report: wake each account first")
    parser.add_argument("--resend-race", action="store_true", help="see the module doc")
    parser.add_argument("--batch-path", action="store_true", help="ingest via Accounts.submit")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure(level=args.log_level, json=True)  # stderr: stdout carries only the protocol
    if args.report:
        say(json.dumps(trio.run(report, args.config, args.wake), sort_keys=True))
    elif args.resend_race:
        trio.run(resend_race, args.config)
    else:
        trio.run(
            ingest,
            args.config,
            args.seed,
            args.events,
            args.start,
            args.mix_lanes,
            args.batch_path,
        )


if __name__ == "__main__":
    main()
