"""CPU per event of decoding and validating producer batches: ``python -m meterd.bench.validate``.

What ``_Connection._batch`` (:mod:`meterd.ingest.server`) does with a batch frame before it
hands the events to the accounts layer: :func:`~meterd.ingest.protocol.decode_frame`,
:func:`~meterd.ingest.protocol.parse_batch`, then every event validated and grouped by
account. The load is the issue's (:func:`meterd.bench.ingest.build_load`): 500-event
batches, accounts drawn uniformly among 10,000, meter ``dyno.seconds`` (``sum``,
dimensions ``size`` and ``app``), decimal-string quantities with 3 decimals, 2 properties,
times within the last hour; every event valid.

Rows (CPU time of this process, ``time.process_time``, per event; median of ``repeats``
runs over the same frames):

* ``peer: msgpack decode alone`` — ``msgpack.unpackb`` of each frame, nothing else: the
  floor any decoder-plus-validator pays with this codec.
* ``main: decode + validate_precise per event`` — the server's loop as on main:
  :meth:`EventValidator.validate_precise` is main's ``validate``, unchanged.
* ``fast: decode + validate per event`` — the same loop with :meth:`EventValidator.validate`
  (fast path, precise fallback): what the server gets without changing its code.
* ``fast: decode + validate_batch`` — :meth:`EventValidator.validate_batch`, grouping included:
  the server's path before the typed decoder (the baseline of the next row).
* ``peer: msgspec decode alone`` — the typed decoder's ``decode`` of each frame (into
  :class:`~meterd.ingest.typed.WireBatch` Structs, its checks made), nothing else.
* ``typed: msgspec decode + accept_typed`` — :class:`~meterd.ingest.typed.BatchReader`:
  ``read`` then ``validate``, what the server does now (grouping included).
* ``... one rejected event a batch`` — the same frames with one event of each batch too old:
  what a batch the typed path does not accept whole costs on the old path and on the new
  one (its failed attempt, then the old path).

The rows take turns (each repeat runs every row once), so a busy machine weighs on all of
them alike. The garbage collector is set up as :func:`meterd.app.serve` does (thresholds
50,000/20/20, start-up objects frozen): with Python's defaults it would dominate the
figures. The verdicts of every row are compared before timing (they must be equal); the
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]
import msgspec

from meterd.bench.ingest import DEFAULT_METER, build_load
from meterd.config import DEFAULT_WINDOW_MS, Producer
from meterd.ingest.protocol import decode_frame, parse_batch
from meterd.ingest.typed import BatchReader, WireBatch
from meterd.ingest.validate import EventValidator, Rejection
from meterd.memory import THRESHOLDS
from meterd.model import Aggregation, Event, Meter

Groups = dict[str, tuple[list[int], list[Event]]]
Outcome = tuple[Groups, list[Rejection]]


BatchValidator = Callable[[list[Any], int], Outcome]


def _per_event(validate: Callable[[int, object, int, int], Event | Rejection]) -> BatchValidator:
    """A batch validated event by event by ``validate``, grouped as ``_Connection._batch``
    does on main (this loop is a copy of its)."""

    def validate_batch(raw_events: list[Any], now: int) -> Outcome:
        rejected: list[Rejection] = []
        groups: Groups = {}
        for index, raw in enumerate(raw_events):
            result = validate(index, raw, now, now)
            if isinstance(result, Rejection):
                rejected.append(result)
                continue
            group = groups.get(result.account)
            if group is None:
                group = groups[result.account] = ([], [])
            group[0].append(index)
            group[1].append(result)
        return groups, rejected

    return validate_batch


def _decode_and_validate(
    frames: list[bytes], validate_batch: BatchValidator, now: int
) -> list[Outcome]:
    """``_Connection._batch`` up to handing the events over: decode, check, validate."""
    outcomes: list[Outcome] = []
    last_seq = -1
    for message in frames:
        frame = decode_frame(message)
        seq, raw_events = parse_batch(frame, last_seq, 1000)
        last_seq = seq
        outcomes.append(validate_batch(raw_events, now))
    return outcomes


def _decode_only(frames: list[bytes]) -> list[Any]:
    return [msgpack.unpackb(message, raw=False, strict_map_key=False) for message in frames]


_typed_decode = msgspec.msgpack.Decoder(WireBatch).decode


def _spoilt(frames: list[bytes], too_old: int) -> list[bytes]:
    """``frames`` with one event of each batch (its middle one) too old: rejected
    (``time_out_of_range``), so the typed path leaves the batch to the old one."""
    spoilt = []
    for message in frames:
        frame = msgpack.unpackb(message)
        frame["events"][len(frame["events"]) // 2]["time"] = too_old
        spoilt.append(msgpack.packb(frame))
    return spoilt


def _typed_decode_only(frames: list[bytes]) -> list[WireBatch]:
    return [_typed_decode(message) for message in frames]


def _read_and_validate(frames: list[bytes], reader: BatchReader, now: int) -> list[Outcome]:
    """``_Connection._batch`` up to handing the events over, as it is now."""
    outcomes: list[Outcome] = []
    last_seq = -1
    for message in frames:
        batch = reader.read(message, last_seq)
        last_seq = batch.seq
        outcomes.append(batch.validate(now))
    return outcomes


def _cpu_per_event(
    rows: list[tuple[str, Callable[[], object]]], events: int, repeats: int
) -> dict[str, float]:
    """Median CPU µs per event of each row over ``repeats`` turns (a run's result is kept
    alive until it is timed, as the server keeps its events)."""
    samples: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, run in rows:
            gc.collect()
            start = time.process_time()
            result = run()
            samples[name].append((time.process_time() - start) / events * 1e6)
            del result
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.validate", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=9)
    options = parser.parse_args(argv)
    now = time.time_ns() // 1_000_000
    load = build_load(options.events, options.accounts, 1, options.batch, now_ms=now)
    frames = load.frames[0]
    meter = Meter(DEFAULT_METER, Aggregation.SUM, ("size", "app"))
    validator = EventValidator({meter.name: meter}, Producer("bench", "t"), DEFAULT_WINDOW_MS)
    reader = BatchReader(validator, 1000)
    spoilt = _spoilt(frames, now - 2 * DEFAULT_WINDOW_MS)

    rows: list[tuple[str, Callable[[], object]]] = [
        ("peer: msgpack decode alone", lambda: _decode_only(frames)),
        (
            "main: decode + validate_precise per event",
            lambda: _decode_and_validate(frames, _per_event(validator.validate_precise), now),
        ),
        (
            "fast: decode + validate per event",
            lambda: _decode_and_validate(frames, _per_event(validator.validate), now),
        ),
        (
            "fast: decode + validate_batch",
            lambda: _decode_and_validate(frames, validator.validate_batch, now),
        ),
        ("peer: msgspec decode alone", lambda: _typed_decode_only(frames)),
        (
            "typed: msgspec decode + accept_typed",
            lambda: _read_and_validate(frames, reader, now),
        ),
        (
            "fast: validate_batch, one rejected event a batch",
            lambda: _decode_and_validate(spoilt, validator.validate_batch, now),
        ),
        (
            "typed: left to the old path, one rejected event a batch",
            lambda: _read_and_validate(spoilt, reader, now),
        ),
    ]
    # The collector as meterd.app.serve sets it up (see the module doc).
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
    reference = _decode_and_validate(frames, _per_event(validator.validate_precise), now)
    if any(reference[n][1] for n in range(len(reference))):
        raise SystemExit("the load has rejected events: the bench measures valid ones")
    for name, run in [*rows[2:4], rows[5]]:
        if run() != reference:
            raise SystemExit(f"{name}: verdicts differ from validate_precise's")
    if rows[6][1]() != rows[7][1]():
        raise SystemExit(f"{rows[7][0]}: verdicts differ from validate_batch's")

    print(
        f"{load.events} events in {len(frames)} batches of {options.batch}, "
        f"{options.accounts} accounts; CPU µs per event, median of {options.repeats}"
    )
    figures = _cpu_per_event(rows, load.events, options.repeats)
    width = max(len(name) for name in figures)
    for name, figure in figures.items():
        decoder = rows[4][0] if name.startswith("typed") else rows[0][0]
        extra = (
            ""
            if name.startswith("peer")
            else f"   (beyond decoding: {figure - figures[decoder]:.2f})"
        )
        print(f"  {name:<{width}}  {figure:6.2f}{extra}")
    main_figure = figures[rows[1][0]]
    for name, _ in rows[2:4]:
        print(f"  speed-up of {name!r} over main: {main_figure / figures[name]:.2f}x")
    for typed, baseline in ((rows[5][0], rows[3][0]), (rows[7][0], rows[6][0])):
        print(
            f"  speed-up of {typed!r} over {baseline!r} (the baseline):"
            f" {figures[baseline] / figures[typed]:.2f}x"
        )


if __name__ == "__main__":
    main()
