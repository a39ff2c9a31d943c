"""Python's cyclic garbage collector in the daemon: how it is tuned, and its pauses measured.

Every collection stops the whole process (the GIL is held throughout), so a pause delays
every batch in flight: it is ack latency. A young-generation collection walks every
container object allocated since the previous one that is still alive, and under load most
of them are: the events of the batches in flight (read, waiting for the writer's commit,
waiting in an actor's mailbox) and the usage cells the actors add. So the pauses grow with
the in-flight budget (``[ingest] max_in_flight_events``) and with the first threshold.

:func:`tune` sets the thresholds (:data:`THRESHOLDS`, see there for why) and freezes what
start-up allocated (configuration, code, the supervision tree), which no collection needs to
walk again. :func:`collect_young` runs the young collections on a timer as well, so that
what one walks is bounded by time, not only by the allocation count (see there for why).
:class:`GcPauses` times every collection through ``gc.callbacks`` (wall time, as a request
experiences it) and reports ``(generation, seconds)``; the daemon exports them as
the ``meterd_gc_pause_seconds`` histogram on ``/metrics``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn

import trio

__all__ = ["MIDDLE_EVERY", "THRESHOLDS", "YOUNG_EVERY", "GcPauses", "collect_young", "tune"]

THRESHOLDS: Final = (10_000, 20, 20)
"""``gc.set_threshold`` values. The default first threshold (700 allocations) makes the
collector walk the same in-flight events many times over (14-19 % of the ingest path was
measured in collections). A young collection's pause grows with the first threshold (it
walks what was allocated since the last one and is still alive) and its cost per object
does not: 10,000 gives pauses of ~10-20 ms at 20,000 events/s where 50,000 gave 40-60 ms,
for the same collector time per second (6-10 ms) and CPU per event, and the ack p99 of the
issue's half-load row fell from 92-114 ms to 34-57 ms (docs/ingest-bench.md). 5,000 makes
middle and old collections frequent (~270 a 10 s row, 50-70 ms of pauses per second)."""


YOUNG_EVERY: Final = 0.1
"""Seconds between two young collections run by :func:`collect_young`."""

MIDDLE_EVERY: Final = 10
"""Every this many timed collections, :func:`collect_young` collects the middle generation
too (once a second): the collector's own count, which would, only moves with allocations."""


async def collect_young(every: float = YOUNG_EVERY, middle_every: int = MIDDLE_EVERY) -> NoReturn:
    """Collect the young generation every ``every`` seconds, and the middle one with it every
    ``middle_every`` times, until cancelled.

    Why: the first threshold counts container allocations *minus* deallocations, and objects
    that CPython reuses from its free lists (tuples above all) are not counted at all. Under
    a steady load nearly everything allocated is freed, so the count creeps up while what
    survives piles up in the young generation uncounted: a usage cell's key is a reused
    tuple. Six seconds into the issue's half-load row, one young collection walked 84,000
    objects (64,000 of them cell keys) in 35 ms, the worst ack of the row. On a timer, a
    young collection walks at most ``every`` seconds of survivors (about 2,000 cells at
    20,000 events/s, well under a millisecond), and the middle one a second's.

    The automatic collections still run as well (a burst allocates faster than the timer).
    """
    ticks = 0
    while True:
        await trio.sleep(every)
        ticks += 1
        gc.collect(1 if ticks % middle_every == 0 else 0)


def tune() -> None:
    """Set :data:`THRESHOLDS` and freeze every object allocated so far (call once, when the
    daemon has been built)."""
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()


class GcPauses:
    """Times each collection and calls ``observe(generation, seconds)`` after it.

    The hook is process-wide: :meth:`install` it once per process (the daemon's ``serve``),
    :meth:`remove` it when done. ``observe`` runs inside the collector's callback, so it
    must be quick and must not raise.
    """

    def __init__(
        self,
        observe: Callable[[int, float], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._observe = observe
        self._clock = clock
        self._started: float | None = None
        self.collections = 0
        self.seconds = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:  # installed during a collection
            return
        seconds = self._clock() - self._started
        self._started = None
        self.collections += 1
        self.seconds += seconds
        self._observe(int(info["generation"]), seconds)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
