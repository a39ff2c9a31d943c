"""Python's cyclic garbage collector in the daemon: how it is tuned, and its pauses measured.

Every collection stops the whole process (the GIL is held throughout), so a pause delays
every batch in flight: it is ack latency. A young-generation collection walks every
container object allocated since the previous one that is still alive, and under load most
of them are: the events of the batches in flight (read, waiting for the writer's commit,
waiting in an actor's mailbox) and the usage cells the actors add. So the pauses grow with
the in-flight budget (``[ingest] max_in_flight_events``) and with the first threshold.

:func:`tune` sets the thresholds (:data:`THRESHOLDS`, see there for why) and freezes what
start-up allocated (configuration, code, the supervision tree), which no collection needs to
walk again. :func:`collect_on_schedule` runs collections on a timer as well and freezes
what survives, so that what one walks is bounded by time, not by the daemon's state (see
there for why); after a full collection it hands free memory back to the OS (:func:`trim`),
and it runs one early when many actors stopped (a wave of hibernations, see there).
:class:`GcPauses` times every collection through ``gc.callbacks`` (wall time, as a request
experiences it) and reports ``(generation, seconds)``; the daemon exports them as
the ``meterd_gc_pause_seconds`` histogram on ``/metrics``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn

import trio

__all__ = [
    "FREEZE_EVERY",
    "FULL_EVERY",
    "RECLAIM_AFTER",
    "RECLAIM_EVERY",
    "RECLAIM_SHARE",
    "THRESHOLDS",
    "YOUNG_EVERY",
    "GcPauses",
    "collect_on_schedule",
    "trim",
    "trim_off_thread",
    "tune",
]

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
"""Seconds between two young collections run by :func:`collect_on_schedule`."""

FREEZE_EVERY: Final = 1.0
"""Seconds between two middle collections, each followed by ``gc.freeze()``."""

FULL_EVERY: Final = 600.0
"""Seconds between two full collections of everything, frozen objects included."""

RECLAIM_AFTER: Final = 10_000
"""Actors gone since their peak (``live_actors``) that make :func:`collect_on_schedule` run
a full collection early (see there)."""

RECLAIM_EVERY: Final = 30.0
"""Least seconds between two full collections run early."""

RECLAIM_SHARE: Final = 4
"""A full collection runs early only once the live actors are at most 1/4 of their peak:
it walks every live object (~30 per actor), so with most of a burst's actors still awake
(``[accounts] max_awake`` cycling them) it would stop the process for seconds."""


def trim() -> bool:
    """Hand the free memory of the C heap back to the OS (glibc's ``malloc_trim(0)``); False
    where there is no glibc. Memory freed by Python objects stays in the process otherwise:
    in pymalloc's arenas (returned once empty) and in glibc's heap, whose free pages it
    keeps for the next allocations (the allocator's high-water mark)."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False


async def trim_off_thread() -> bool:
    """:func:`trim` on a worker thread (it walks the heap; ctypes releases the GIL)."""
    return await trio.to_thread.run_sync(trim)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # ctypes releases the GIL while it runs
    except (AttributeError, OSError):
        return None


async def collect_on_schedule(
    young_every: float = YOUNG_EVERY,
    freeze_every: float = FREEZE_EVERY,
    full_every: float = FULL_EVERY,
    *,
    live_actors: Callable[[], int] | None = None,
    reclaim_after: int = RECLAIM_AFTER,
    reclaim_every: float = RECLAIM_EVERY,
) -> NoReturn:
    """Run the collector on a timer, until cancelled: a young collection every
    ``young_every`` seconds; every ``freeze_every`` a middle one, then ``gc.freeze()`` (what
    survived goes to the permanent generation, which no collection walks); every
    ``full_every``, ``gc.unfreeze()``, a full collection, and ``gc.freeze()`` again, then
    :func:`trim` on a worker thread. The full collection also runs early, at a
    ``freeze_every`` tick, when ``live_actors()`` has fallen by ``reclaim_after`` since its
    peak, to 1/:data:`RECLAIM_SHARE` of it at most, and did not fall during the last
    ``freeze_every`` (at most once per ``reclaim_every`` seconds).

    Why, measured on the issue's half-load row (docs/ingest-bench.md):

    * **Young collections by time.** The first threshold counts container allocations
      *minus* deallocations, and objects that CPython reuses from its free lists (tuples
      above all) are not counted at all. Under a steady load nearly everything allocated is
      freed, so the count creeps up while what survives piles up uncounted: a usage cell's
      key is a reused tuple. One young collection walked 84,000 objects (64,000 cell keys)
      in 35 ms. On a timer one walks at most ``young_every`` of survivors (~2,000 cells at
      20,000 events/s).
    * **Freezing what survives.** A full collection walks every live container and every
      entry in it: the actors' cells, the journal tail, the registry, some 1-2 million
      entries at 10,000 accounts, 200-400 ms with the whole process stopped. The automatic
      collector runs one whenever the old generation has grown by a quarter, which a
      growing set of cells does every ~20 s: p99 279 ms over a 60 s row. Frozen, they are
      never walked; an automatic full collection finds an old generation holding at most a
      second's survivors. Frozen objects are still freed by reference counting as usual;
      only garbage *cycles* among them wait for the next full collection.
    * **A full collection every ``full_every``** frees those cycles (a closed connection's
      tasks, say): one pause of a few hundred ms every ten minutes instead of every ~20 s,
      so memory held by cyclic garbage is bounded by ten minutes of it.
    * **Early after actors stop.** A stopped meter actor is such garbage: the supervision
      runtime keeps each actor in a reference cycle (the actor, its ref, its child record),
      ~2 kB each, and an actor awake for a second was frozen. A wave of hibernations
      (150,000 new accounts asleep together) left ~300 MB of it for up to ten minutes, and
      three such waves added up. So when the live actors have fallen by ``reclaim_after``
      since their peak, to a quarter of it at most, and stopped falling (the wave is over),
      that second's tick is a full collection; its pause is short then, as it walks what
      is alive, and few actors are.
    * **Trim after each full collection.** What the collection freed stays in the process
      (the C heap's free pages, pymalloc's arenas until empty): :func:`trim` hands the free
      pages back, so RSS falls after a wave instead of staying at its high-water mark. It
      runs on a worker thread (it walks the heap; ctypes releases the GIL).

    The automatic collections still run as well (a burst allocates faster than the timer).
    """
    young_per_freeze = max(1, round(freeze_every / young_every))
    young_per_full = max(1, round(full_every / young_every))
    young_per_reclaim = max(1, round(reclaim_every / young_every))
    ticks = 0
    peak = before = live_actors() if live_actors is not None else 0
    last_full = -young_per_reclaim  # (in ticks)
    while True:
        await trio.sleep(young_every)
        ticks += 1
        full = ticks % young_per_full == 0
        if live_actors is not None:
            live = live_actors()
            peak = max(peak, live)
            if ticks % young_per_freeze == 0:
                if (
                    peak - live >= reclaim_after
                    and live * RECLAIM_SHARE <= peak
                    and live >= before  # the fall has stopped: the wave is over
                    and ticks - last_full >= young_per_reclaim
                ):
                    full = True
                before = live
        if full:
            gc.unfreeze()
            gc.collect()
            freeze()
            last_full = ticks
            peak = live_actors() if live_actors is not None else 0
            await trim_off_thread()
        elif ticks % young_per_freeze == 0:
            gc.collect(1)
            freeze()
        else:
            gc.collect(0)


def tune() -> None:
    """Set :data:`THRESHOLDS` and freeze every object allocated so far (call once, when the
    daemon has been built)."""
    gc.set_threshold(*THRESHOLDS)
    freeze()


FREEZE_COUNT_TTL: Final = 1.0
"""Seconds one reading of the frozen objects serves every caller in the process (an owner
process has a metrics collector per cell, all asked at each scrape)."""
_frozen: list[float] = [-math.inf, 0]  # [when read (monotonic), count]


def freeze() -> None:
    """``gc.freeze()``; the next :func:`frozen_objects` reads the new count."""
    gc.freeze()
    _frozen[0] = -math.inf


def frozen_objects() -> int:
    """``gc.get_freeze_count()``, read at most once per :data:`FREEZE_COUNT_TTL` between two
    :func:`freeze` calls: it walks the whole permanent generation (millions of objects at
    10,000 accounts, tens of ms), and the figure is the process's, not a cell's."""
    now = time.monotonic()
    if now - _frozen[0] >= FREEZE_COUNT_TTL:
        _frozen[0], _frozen[1] = now, gc.get_freeze_count()
    return int(_frozen[1])


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
