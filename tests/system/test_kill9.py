"""Durability under ``kill -9``: the accounts+store layer in a real process (protocol.md §2.5).

Each round starts ``tests/procs/ingest_driver.py`` (the daemon's tree built by
``meterd.app.build`` from a config.toml in ``tmp_path``) on a deterministic event stream,
reads its ``SENT``/``ACK`` lines and ``SIGKILL``s it at a random point: right after spawning
it, when the tree is up, when the first batch is in flight, or after a random number of
acknowledged batches. Then:

* **after the restart, before re-sending**, a ``--report`` process checks every usage row
  (every account and meter, hour and day windows, overall and per dimension): it holds at
  least what the acknowledged events imply (nothing acked was lost) and at most what all
  events sent so far imply (nothing was counted twice);
* the next round continues the same stream on the same database, from the first position
  not yet acknowledged (or from the start: re-sending everything is safe);
* after a few kills the stream is run to ``DONE`` and the final usage must equal, exactly,
  a model computed here from the stream's unique events (the first occurrence of each
  ``(account, id)`` wins; exact ``Decimal`` sums, max of quantities, set sizes).

The default run makes ``ROUNDS`` kills (about 6 s here); ``METERD_SOAK=N`` makes ``N``. The
``slow`` variant (selected only by ``pytest -m slow``) soaks ``SOAK_ROUNDS`` kills (or
``METERD_SOAK``) on bigger streams; ``METERD_KILL9_MIX_LANES=1`` lets exact duplicates race
their original there. ``METERD_KILL9_SEED`` replays a campaign's choices (its seed is in every
failure message, with the last rounds and the drivers' stderr). Nothing waits on the clock:
every wait is on a line of the driver's output (or its exit), under a generous timeout.

Two regression tests at the end pin bugs this campaign found (both fixed): a usage query right
after a restart missed what was only in the journal, and a re-send was acknowledged as a
duplicate before its original was durable.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, Inexact, Rounded, localcontext
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import pytest
import trio

from meterd.config import load
from meterd.model import Aggregation, Event, Meter, canonical_quantity
from tests.procs.ingest_driver import (
    ACCOUNTS,
    COUNT_METER,
    MAX_METER,
    METERS,
    SUM_METER,
    UNIQUE_METER,
    WINDOWS,
    Key,
    Planned,
    generate,
    plan_batches,
)

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3
SOAK_ROUNDS = 300
EVENTS = 2000  # per stream
KILLS_PER_STREAM = 7  # then the stream is run to DONE and checked exactly
LINE_TIMEOUT = 60.0  # seconds; only reached if the driver hangs
EXIT_TIMEOUT = 30.0

# What the driver's meters must be; added to the copied config if it lacks them.
DRIVER_METERS: dict[str, tuple[Aggregation, tuple[str, ...], str | None]] = {
    SUM_METER: (Aggregation.SUM, ("size", "app"), None),
    COUNT_METER: (Aggregation.COUNT, ("app",), None),
    MAX_METER: (Aggregation.MAX, ("database",), None),
    UNIQUE_METER: (Aggregation.UNIQUE_COUNT, (), "user"),
}

Combo: TypeAlias = tuple[str, str, str, str | None]
"""``(account, meter, window, group_by)``: one usage query."""
Rows: TypeAlias = dict[tuple[int, str | None], str]
"""``(window start, group value) -> value text`` of one query."""
Usage: TypeAlias = dict[Combo, Rows]


def soak_rounds() -> int | None:
    text = os.environ.get("METERD_SOAK", "").strip()
    return int(text) if text else None


# --------------------------------------------------------------------------- config


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (the tree's listeners must not collide with others)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_config(
    path: Path,
    store: Path,
    *,
    checkpoint_interval: float = 5.0,
    commit_interval_ms: int = 2,
    idle_timeout: float = 300.0,
    wal_checkpoint_interval_ms: int | None = None,
    owners: int | str | None = None,
) -> Path:
    """The shipped config.toml with the store at ``store``, free loopback ports, the given
    store and accounts settings, and the driver's meters (added if it lacks them).

    ``owners=None`` leaves out the shipped ``[partitions]`` table: the daemon is one
    process with every account in ``store`` (what this file's driver builds, and what the
    tests that add a ``[partitions]`` table of their own start from); ``owners=N`` or
    ``"auto"`` sets ``[partitions] owners`` (the shipped value: gateway + owners)."""
    ingest_port, api_port = free_ports(2)
    store_settings: dict[str, object] = {
        "path": str(store),
        "checkpoint_interval": checkpoint_interval,
        "commit_interval": f"{commit_interval_ms}ms",
    }
    if wal_checkpoint_interval_ms is not None:
        store_settings["wal_checkpoint_interval"] = f"{wal_checkpoint_interval_ms}ms"
    overrides: dict[str, dict[str, object]] = {
        "ingest": {"listen": f"127.0.0.1:{ingest_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "store": store_settings,
        "accounts": {"idle_timeout": idle_timeout},
    }
    if owners is not None:
        overrides["partitions"] = {"owners": owners}
    text = (ROOT / "config.toml").read_text()
    shipped = tomllib.loads(text)
    section = ""
    out: list[str] = []
    for line in text.splitlines():
        header = re.fullmatch(r"\s*\[\[?([A-Za-z0-9_.-]+)\]\]?\s*(#.*)?", line)
        assignment = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
        if header:
            section = header.group(1)
        elif assignment and assignment.group(1) in overrides.get(section, {}):
            continue  # replaced right after the header
        if section == "partitions" and owners is None:
            continue  # one process: the shipped [partitions] table left out
        out.append(line)
        if header and section in overrides:
            out += [f"{key} = {json.dumps(value)}" for key, value in overrides[section].items()]
    for name, values in overrides.items():
        if name not in shipped:
            out += ["", f"[{name}]", *(f"{key} = {json.dumps(v)}" for key, v in values.items())]
    declared = {meter["name"] for meter in shipped.get("meters", [])}
    for name, (aggregation, dimensions, unique) in DRIVER_METERS.items():
        if name not in declared:
            out += ["", "[[meters]]", f"name = {json.dumps(name)}"]
            out += [f"aggregation = {json.dumps(aggregation.value)}"]
            out += [f"dimensions = {json.dumps(list(dimensions))}"]
            if unique:
                out += [f"unique_property = {json.dumps(unique)}"]
    path.write_text("\n".join(out) + "\n")
    config = load(path)
    assert config.store_path == store
    for name, (aggregation, dimensions, unique) in DRIVER_METERS.items():
        meter = config.meters_by_name[name]
        assert (meter.aggregation, meter.dimensions, meter.unique_property) == (
            aggregation,
            dimensions,
            unique,
        ), f"config.toml changed meter {name!r}; the driver's stream assumes {aggregation}"
    return path


def driver_meters(config: Path) -> dict[str, Meter]:
    return {name: load(config).meters_by_name[name] for name in METERS}


# --------------------------------------------------------------------------- the model


def first_occurrences(stream: Iterable[Planned]) -> dict[Key, Event]:
    """Each ``(account, id)`` with its first event: what the store must hold for it."""
    first: dict[Key, Event] = {}
    for planned in stream:
        first.setdefault(planned.key, planned.event)
    return first


def expected_usage(events: Iterable[Event], meters: Mapping[str, Meter]) -> Usage:
    """What the driver's ``--report`` must print for exactly ``events`` (unique ones)."""
    cells: dict[Combo, dict[tuple[int, str | None], Any]] = {
        (account, name, window.value, group_by): {}
        for account in ACCOUNTS
        for name in METERS
        for window in WINDOWS
        for group_by in (None, *meters[name].dimensions)
    }
    with localcontext() as exact:
        exact.prec = 1000
        exact.traps[Inexact] = exact.traps[Rounded] = True
        for event in events:
            meter = meters[event.meter]
            for window in WINDOWS:
                start = window.align(event.time)
                for group_by in (None, *meter.dimensions):
                    group = None if group_by is None else (event.property(group_by) or "")
                    cell = cells[(event.account, meter.name, window.value, group_by)]
                    key = (start, group)
                    cell[key] = _absorb(meter, cell.get(key), event)
    return {
        combo: {key: _text(value) for key, value in rows.items()} for combo, rows in cells.items()
    }


def _absorb(meter: Meter, value: Any, event: Event) -> Any:
    quantity = Decimal(event.quantity)
    match meter.aggregation:
        case Aggregation.SUM:
            return quantity if value is None else value + quantity
        case Aggregation.COUNT:
            return (value or 0) + 1
        case Aggregation.MAX:
            return quantity if value is None else max(value, quantity)
        case Aggregation.UNIQUE_COUNT:
            assert meter.unique_property is not None
            users: set[str] = value or set()
            user = event.property(meter.unique_property)
            return users if user is None else users | {user}
    raise AssertionError(f"the model has no {meter.aggregation}")


def _text(value: Any) -> str:
    if isinstance(value, set):
        return str(len(value))
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, Decimal)
    return canonical_quantity(value)


def parse_report(text: str) -> Usage:
    usage: Usage = {}
    for entry in json.loads(text)["usage"]:
        combo = (entry["account"], entry["meter"], entry["window"], entry["group_by"])
        rows: Rows = {}
        for start, value, group in entry["rows"]:
            assert (start, group) not in rows, f"{combo}: row {start}/{group} twice"
            rows[(start, group)] = value
        usage[combo] = rows
    return usage


def exact_differences(actual: Usage, expected: Usage) -> list[str]:
    problems = []
    for combo in sorted(set(actual) | set(expected), key=repr):
        got, want = actual.get(combo), expected.get(combo)
        if got == want:
            continue
        if got is None or want is None:
            problems.append(f"{combo}: reported {got}, expected {want}")
            continue
        for key in sorted(set(got) | set(want), key=repr):
            if got.get(key) != want.get(key):
                problems.append(f"{combo} {key}: reported {got.get(key)}, expected {want.get(key)}")
    return problems


def bound_violations(actual: Usage, lower: Usage, upper: Usage) -> list[str]:
    """Rows outside ``lower <= actual <= upper`` (every aggregation here is monotone)."""
    problems = []
    for combo in sorted(upper, key=repr):
        got, low, high = actual.get(combo, {}), lower[combo], upper[combo]
        for key in sorted(set(got) | set(low) | set(high), key=repr):
            value, least, most = got.get(key), low.get(key), high.get(key)
            if least is not None and (value is None or Decimal(value) < Decimal(least)):
                problems.append(
                    f"LOST {combo} {key}: reported {value}, the acked events alone make {least}"
                )
            if value is not None and (most is None or Decimal(value) > Decimal(most)):
                problems.append(
                    f"DOUBLE {combo} {key}: reported {value}, all events sent make only {most}"
                )
    return problems


# --------------------------------------------------------------------------- the driver


class Driver:
    """One run of the driver: its process and its stdout, read line by line."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self._buffer = bytearray()
        self._eof = False

    @classmethod
    async def start(cls, log: Path, *args: str, stdin: int = subprocess.DEVNULL) -> Driver:
        with log.open("ab") as stderr:
            stderr.write(f"--- driver {' '.join(args)}\n".encode())
            stderr.flush()
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tests.procs.ingest_driver", *args],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(process, log)

    async def line(self) -> str | None:
        """The next stdout line, or None at the end; fails if the driver seems to hang."""
        assert self.process.stdout is not None
        with trio.fail_after(LINE_TIMEOUT):
            while b"\n" not in self._buffer and not self._eof:
                chunk = await self.process.stdout.receive_some(65536)
                if chunk:
                    self._buffer += chunk
                else:
                    self._eof = True
        if b"\n" in self._buffer:
            line, _, rest = self._buffer.partition(b"\n")
            self._buffer = bytearray(rest)
            return line.decode()
        if self._buffer:
            cut = bytes(self._buffer)  # a line cut by the kill
            self._buffer = bytearray()
            return cut.decode()
        return None

    def kill(self) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def wait(self) -> int:
        with trio.fail_after(EXIT_TIMEOUT):
            return await self.process.wait()

    async def aclose(self) -> None:
        self.kill()
        with trio.move_on_after(EXIT_TIMEOUT):
            await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.aclose()

    def stderr_tail(self) -> str:
        return log_tail(self.log)


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def report(log: Path, config: Path, *, wake: bool = True) -> Usage:
    """Usage as a freshly started process reads it through ``Accounts.usage``.

    ``wake``: start each account's actor first, so it recovers from the journal before it
    is queried. Without it, an account whose actor is asleep is read from its checkpointed
    windows only, which misses what was journaled after the last checkpoint (a bug, see
    :func:`test_usage_right_after_a_restart_counts_every_acknowledged_event`); the campaign
    wakes the accounts so that it checks what recovery restores.
    """
    args = ["--config", str(config), "--report", *(["--wake"] if wake else [])]
    driver = await Driver.start(log, *args)
    try:
        text = await driver.line()
        rest = await driver.line()
        code = await driver.wait()
    finally:
        await driver.aclose()
    if code != 0 or text is None or rest is not None:
        pytest.fail(f"--report exited {code}:\n{driver.stderr_tail()}", pytrace=False)
    return parse_report(text)


# --------------------------------------------------------------------------- the campaign


@dataclass
class Stream:
    """One event stream and its database, continued across kills."""

    seed: int
    stream: list[Planned]
    config: Path
    meters: dict[str, Meter]
    first: dict[Key, Event]
    acked: set[Key] = field(default_factory=set)
    sent: set[Key] = field(default_factory=set)
    kills: int = 0

    def next_start(self) -> int:
        """The first position whose event is not acknowledged (all before it are)."""
        for planned in self.stream:
            if planned.key not in self.acked:
                return planned.pos
        return len(self.stream)

    def usage_of(self, keys: Iterable[Key]) -> Usage:
        return expected_usage((self.first[key] for key in keys), self.meters)


@dataclass
class Campaign:
    tmp_path: Path
    seed: int
    events: int
    mix_lanes: bool
    batch_path: bool = False  # the driver ingests through Accounts.submit (as the server does)
    rng: random.Random = field(init=False)
    log: Path = field(init=False)
    history: list[str] = field(default_factory=list)
    kills: int = 0
    checks: int = 0
    streams: int = 0
    acks: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.log = self.tmp_path / "driver-stderr.log"

    def fail(self, message: str) -> NoReturn:
        where = "\n".join(self.history[-12:])
        pytest.fail(
            f"{message}\n--- campaign METERD_KILL9_SEED={self.seed} "
            f"(mix_lanes={self.mix_lanes}, batch_path={self.batch_path}), last rounds:\n{where}"
            f"\n--- drivers' stderr (tail of {self.log}):\n{log_tail(self.log)}",
            pytrace=False,
        )

    def new_stream(self) -> Stream:
        self.streams += 1
        seed = self.rng.randrange(2**32)
        folder = self.tmp_path / f"stream{self.streams}"
        folder.mkdir()
        checkpoint_interval = self.rng.choice((0.01, 0.05, 0.5, 3600.0))
        commit_interval_ms = self.rng.choice((0, 2, 20))
        idle_timeout = self.rng.choice((0.05, 300.0))  # 0.05: actors hibernate and wake
        config = write_config(
            folder / "config.toml",
            folder / "meterd.sqlite3",
            checkpoint_interval=checkpoint_interval,
            commit_interval_ms=commit_interval_ms,
            idle_timeout=idle_timeout,
        )
        stream = generate(seed, self.events, mix_lanes=self.mix_lanes)
        self.history.append(
            f"stream {self.streams}: --seed {seed} --events {self.events}"
            f" (checkpoint_interval {checkpoint_interval}, commit_interval_ms"
            f" {commit_interval_ms}, idle_timeout {idle_timeout})"
        )
        return Stream(seed, stream, config, driver_meters(config), first_occurrences(stream))

    def driver_args(self, stream: Stream, start: int) -> list[str]:
        args = ["--config", str(stream.config), "--seed", str(stream.seed)]
        args += ["--events", str(self.events), "--start", str(start)]
        if self.batch_path:
            args.append("--batch-path")
        return [*args, "--mix-lanes"] if self.mix_lanes else args

    def take(self, stream: Stream, line: str) -> str:
        """Record one driver line; returns its kind."""
        kind, *words = line.split()
        if kind in ("SENT", "ACK"):
            account, ids = words[0], words[1:]
            keys = {(account, id) for id in ids}
            if kind == "SENT":
                stream.sent |= keys
            else:
                unsent = keys - stream.sent
                if unsent:
                    self.fail(f"acknowledged but never sent: {sorted(unsent)[:5]}")
                stream.acked |= keys
                self.acks += 1
        elif kind == "FAIL":
            self.fail(f"ingest raised in the driver (see its stderr): {line}")
        elif kind not in ("READY", "DONE"):
            self.fail(f"unexpected driver output {line!r}")
        return kind

    async def kill_round(self, stream: Stream) -> bool:
        """Start the driver, kill it at a random point; True if it finished first."""
        start = 0 if self.rng.random() < 0.3 else stream.next_start()
        batches = sum(len(lane) for lane in plan_batches(stream.stream, stream.seed, start))
        point = self.rng.random()
        mode, acks = (
            ("at spawn", 0)
            if point < 0.1
            else ("at READY", 0)
            if point < 0.2
            else ("at first SENT", 0)
            if point < 0.3
            else ("after acks", self.rng.randint(1, max(1, batches - 1)))
        )
        self.history.append(
            f"  round {self.kills + 1}: --start {start} ({batches} batches), kill {mode}"
            + (f" {acks}" if acks else "")
        )
        driver = await Driver.start(self.log, *self.driver_args(stream, start))
        done = False
        try:
            seen = 0
            while mode != "at spawn":
                line = await driver.line()
                if line is None:
                    self.fail(f"driver ended before the kill point ({mode})")
                kind = self.take(stream, line)
                if kind == "DONE":
                    done = True
                    break
                seen += kind == "ACK"
                if (
                    (mode == "at READY" and kind == "READY")
                    or (mode == "at first SENT" and kind == "SENT")
                    or (mode == "after acks" and seen >= acks)
                ):
                    break
            driver.kill()
            # What it printed before dying counts too: those acks were given.
            while (line := await driver.line()) is not None:
                done = self.take(stream, line) == "DONE" or done
            code = await driver.wait()
        finally:
            await driver.aclose()
        if code not in (-signal.SIGKILL, 0) or (code == 0 and not done):
            self.fail(f"driver exited {code}")
        self.kills += 1
        stream.kills += 1
        self.history[-1] += f" -> {len(stream.acked)} acked, {len(stream.sent)} sent"
        return done

    async def check_bounds(self, stream: Stream) -> None:
        """After a kill, before re-sending: acked <= usage <= sent, row by row."""
        actual = await report(self.log, stream.config)
        self.checks += 1
        problems = bound_violations(
            actual, stream.usage_of(stream.acked), stream.usage_of(stream.sent)
        )
        if problems:
            self.fail(
                f"after kill -9 and restart, {len(problems)} usage rows are wrong:\n"
                + "\n".join(problems[:15])
            )

    async def finish(self, stream: Stream) -> None:
        """Run the stream to DONE (all of it, or from the first unacked), compare exactly."""
        start = 0 if self.rng.random() < 0.5 else stream.next_start()
        self.history.append(f"  finish: --start {start}")
        driver = await Driver.start(self.log, *self.driver_args(stream, start))
        try:
            done = False
            while (line := await driver.line()) is not None:
                done = self.take(stream, line) == "DONE" or done
            code = await driver.wait()
        finally:
            await driver.aclose()
        if code != 0 or not done:
            self.fail(f"driver exited {code} without DONE")
        if stream.acked != set(stream.first):
            self.fail(f"not every event acknowledged: {len(set(stream.first) - stream.acked)}")
        actual = await report(self.log, stream.config)
        self.checks += 1
        problems = exact_differences(actual, expected_usage(stream.first.values(), stream.meters))
        if problems:
            self.fail(
                f"final usage differs from the stream's unique events in {len(problems)} rows:\n"
                + "\n".join(problems[:15])
            )

    async def run(self, rounds: int) -> None:
        stream = self.new_stream()
        while self.kills < rounds:
            done = await self.kill_round(stream)
            # Else the next driver recovers through ingest; a stream's first kill is always
            # checked, so that every campaign checks the bounds between kills.
            if stream.kills == 1 or self.rng.random() < 0.75:
                await self.check_bounds(stream)
            if done or stream.kills >= KILLS_PER_STREAM or stream.next_start() >= self.events:
                await self.finish(stream)
                if self.kills < rounds:
                    stream = self.new_stream()
                    continue
                return
        await self.finish(stream)


def campaign_seed() -> int:
    text = os.environ.get("METERD_KILL9_SEED", "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**32)


# --------------------------------------------------------------------------- tests


async def test_acknowledged_events_survive_kill_9_and_nothing_counts_twice(
    tmp_path: Path,
) -> None:
    rounds = soak_rounds() or ROUNDS
    campaign = Campaign(tmp_path, campaign_seed(), EVENTS, mix_lanes=False)
    await campaign.run(rounds)
    assert campaign.kills >= rounds
    assert campaign.checks > campaign.streams  # bounds after kills, and exact at every end
    print(
        f"kill -9 campaign {campaign.seed}: {campaign.kills} kills, {campaign.streams} streams,"
        f" {campaign.checks} usage checks, {campaign.acks} acks read"
    )


async def test_kill_9_on_the_batch_path_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    """The same campaign through ``Accounts.submit`` (what the websocket server uses): the
    ack comes at commit and the actors apply after it, so kills land between the two."""
    rounds = soak_rounds() or ROUNDS
    campaign = Campaign(tmp_path, campaign_seed(), EVENTS, mix_lanes=False, batch_path=True)
    await campaign.run(rounds)
    assert campaign.kills >= rounds
    assert campaign.checks > campaign.streams
    print(
        f"kill -9 batch-path campaign {campaign.seed}: {campaign.kills} kills,"
        f" {campaign.streams} streams, {campaign.checks} usage checks, {campaign.acks} acks read"
    )


@pytest.mark.slow
async def test_kill_9_soak(tmp_path: Path) -> None:
    """The long variant: ``pytest -m slow`` (``METERD_SOAK=N`` sets the rounds).

    Bigger streams; ``METERD_KILL9_MIX_LANES=1`` also lets exact duplicates race their
    original from another task of the same account (which can hit the bug of
    :func:`test_a_duplicate_is_acknowledged_only_once_its_original_is_durable`).
    """
    rounds = soak_rounds() or SOAK_ROUNDS
    mix_lanes = os.environ.get("METERD_KILL9_MIX_LANES", "") == "1"
    campaign = Campaign(tmp_path, campaign_seed(), 3 * EVENTS, mix_lanes=mix_lanes)
    await campaign.run(rounds)
    assert campaign.kills >= rounds
    print(
        f"kill -9 soak {campaign.seed}: {campaign.kills} kills, {campaign.streams} streams,"
        f" {campaign.checks} usage checks, {campaign.acks} acks read"
    )


async def test_usage_right_after_a_restart_counts_every_acknowledged_event(
    tmp_path: Path,
) -> None:
    """The campaign's reports wake every account first; an operator's query does not."""
    config = write_config(
        tmp_path / "config.toml", tmp_path / "meterd.sqlite3", checkpoint_interval=3600
    )
    events = generate(7, 400)
    stream = Stream(7, events, config, driver_meters(config), first_occurrences(events))
    campaign = Campaign(tmp_path, 7, len(events), mix_lanes=False)
    driver = await Driver.start(campaign.log, *campaign.driver_args(stream, 0))
    try:
        acks = 0
        while acks < 40 and (line := await driver.line()) is not None:
            acks += campaign.take(stream, line) == "ACK"
        driver.kill()
        while (line := await driver.line()) is not None:
            campaign.take(stream, line)
        await driver.wait()
    finally:
        await driver.aclose()
    assert stream.acked
    actual = await report(campaign.log, config, wake=False)  # a restarted daemon's answer
    problems = bound_violations(actual, stream.usage_of(stream.acked), stream.usage_of(stream.sent))
    assert not problems, f"{len(problems)} rows are wrong, e.g.:\n" + "\n".join(problems[:5])


async def test_a_duplicate_is_acknowledged_only_once_its_original_is_durable(
    tmp_path: Path,
) -> None:
    """Two producers send the same event at once (say, one re-sends a batch whose ack it
    lost with its connection). While this test holds SQLite's write lock nothing can become
    durable, so an ack seen meanwhile was given too early; ``kill -9`` then shows the cost."""
    store = tmp_path / "meterd.sqlite3"
    config = write_config(tmp_path / "config.toml", store)
    log = tmp_path / "driver-stderr.log"
    driver = await Driver.start(
        log, "--config", str(config), "--resend-race", stdin=subprocess.PIPE
    )
    try:
        assert await driver.line() == "READY", log_tail(log)  # the database exists now
        lock = sqlite3.connect(store, isolation_level=None, timeout=EXIT_TIMEOUT)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the writer cannot commit until ROLLBACK
            assert driver.process.stdin is not None
            await driver.process.stdin.send_all(b"go\n")
            first = await driver.line()  # an ACK, or (when the writer gives up) a FAIL
            driver.kill()
            await driver.wait()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        await driver.aclose()
    assert first is not None, log_tail(log)
    kind, account, *ids = first.split()
    acked = {(account, id) for id in ids} if kind == "ACK" else set()
    rows = (await report(log, config))[(account, COUNT_METER, "hour", None)]
    counted = sum(int(value) for value in rows.values())
    assert counted == len(acked), (
        f"the driver printed {first!r} while the database was locked; after kill -9 and a"
        f" restart {counted} event(s) are counted"
    )
