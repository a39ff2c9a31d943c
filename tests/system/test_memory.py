"""The garbage collector's pauses are measured and exported (meterd/memory.py)."""

from __future__ import annotations

import gc
import itertools
import weakref
from functools import partial

import pytest
import trio
import trio.testing

from meterd import memory
from meterd.api.metrics import Metrics


def test_every_collection_is_timed_by_generation() -> None:
    ticks = itertools.count(step=0.25)  # each reading of the clock is 0.25 s after the last
    seen: list[tuple[int, float]] = []
    pauses = memory.GcPauses(
        lambda generation, seconds: seen.append((generation, seconds)), clock=lambda: next(ticks)
    )
    pauses.install()
    pauses.install()  # once only
    gc.disable()  # only the two collections below
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.remove()
        gc.enable()
    assert seen == [(0, 0.25), (2, 0.25)]
    assert pauses.collections == len(seen)
    assert pauses.seconds == 0.25 * len(seen)
    gc.collect(1)
    assert pauses.collections == len(seen)  # removed: nothing more observed
    assert pauses not in gc.callbacks


def test_a_hook_installed_mid_collection_ignores_the_end_it_did_not_see_start() -> None:
    seen: list[tuple[int, float]] = []
    pauses = memory.GcPauses(lambda generation, seconds: seen.append((generation, seconds)))
    pauses("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert seen == []


async def test_pauses_are_a_histogram_on_metrics() -> None:
    metrics = Metrics()
    metrics.observe_gc_pause(1, 0.02)
    metrics.observe_gc_pause(1, 0.3)
    metrics.observe_gc_pause(0, 0.001)
    text = (await metrics.render()).decode()
    assert 'meterd_gc_pause_seconds_count{generation="1"} 2.0' in text
    assert 'meterd_gc_pause_seconds_bucket{generation="1",le="0.025"} 1.0' in text
    assert 'meterd_gc_pause_seconds_count{generation="0"} 1.0' in text
    assert 'meterd_gc_pause_seconds_count{generation="2"} 0.0' in text


def test_tune_sets_the_thresholds_and_freezes() -> None:
    before = gc.get_threshold()
    try:
        memory.tune()
        assert gc.get_threshold() == memory.THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_schedule_young_each_tick_middle_and_freeze_each_second_full_rarely(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, float]] = []
    pauses = memory.GcPauses(
        lambda generation, seconds: seen.append((generation, trio.current_time()))
    )
    gc.disable()  # only the schedule's collections
    pauses.install()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(memory.collect_on_schedule, full_every=3.0))
            await trio.sleep(3.05)
            nursery.cancel_scope.cancel()
    finally:
        pauses.remove()
        gc.unfreeze()
        gc.enable()
    assert [generation for generation, _ in seen] == [0] * 9 + [1] + [0] * 9 + [1] + [0] * 9 + [2]
    assert [round(at, 3) for _, at in seen] == [round(0.1 * tick, 3) for tick in range(1, 31)]


class Node:
    other: Node


def garbage_cycle() -> tuple[Node, weakref.ref[Node]]:
    """Two objects referring to each other (only the cyclic collector frees them)."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first, weakref.ref(first)


async def test_survivors_are_frozen_and_their_cycles_freed_by_the_full_collection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(memory.collect_on_schedule, full_every=3.0))
            alive, alive_ref = garbage_cycle()  # alive at the first freeze (1 s)
            await trio.sleep(1.05)
            assert gc.get_freeze_count() > 0
            del alive  # now garbage, but frozen: no young or middle collection frees it
            young, young_ref = garbage_cycle()
            del young  # garbage before any freeze: the next young collection frees it
            await trio.sleep(0.1)
            assert young_ref() is None
            await trio.sleep(1.8)  # 2.95 s: a middle collection and a freeze since
            gc.collect()  # a full collection, but of what is not frozen
            assert alive_ref() is not None
            await trio.sleep(0.1)  # 3.05 s: the full collection, frozen objects included
            assert alive_ref() is None
            nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()
        gc.enable()


async def test_a_full_collection_runs_early_once_many_actors_stopped_then_memory_is_trimmed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen garbage (stopped actors are reference cycles) is freed at the first second's
    tick after the live actors fell by ``reclaim_after`` from their peak, to a quarter of
    it, and stopped falling, not ten minutes later; at most once per ``reclaim_every``; each full
    collection is followed by a trim."""
    live = 0
    trims: list[float] = []
    trimmed = trio.Event()

    async def fake_trim() -> bool:  # no worker thread: the mock clock would race it
        nonlocal trimmed
        trims.append(trio.current_time())
        trimmed.set()
        trimmed = trio.Event()
        return True

    monkeypatch.setattr(memory, "trim_off_thread", fake_trim)
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    memory.collect_on_schedule,
                    live_actors=lambda: live,
                    reclaim_after=100,
                    reclaim_every=5.0,
                )
            )
            live = 150  # a burst wakes them...
            first, first_ref = garbage_cycle()
            await trio.sleep(1.05)  # ...they are frozen at the second's tick
            del first
            live = 60  # 90 stopped: not enough
            await trio.sleep(1.0)
            live = 45  # 105 stopped, and no more at 4 s, but 45 is over a quarter of 150
            await trio.sleep(2.0)
            assert first_ref() is not None
            assert trims == []
            live = 30  # a fifth of the peak: still falling at the 5 s tick...
            await trio.sleep(1.0)
            assert first_ref() is not None
            await trimmed.wait()  # ...and no more at 6 s: that tick is a full collection
            assert first_ref() is None
            assert trims == [pytest.approx(6.0, abs=0.05)]
            second, second_ref = garbage_cycle()
            live = 200
            await trio.sleep(1.05)  # frozen at 7 s
            del second
            live = 0  # 200 stopped, settled at 9 s, but the last one was at 6 s
            await trio.sleep(3.0)
            assert second_ref() is not None
            await trimmed.wait()  # 5 s after the last one
            assert second_ref() is None
            assert trims[1] == pytest.approx(11.0, abs=0.05)
            nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()
        gc.enable()


def test_trim_hands_memory_back_or_says_it_cannot() -> None:
    assert memory.trim() in (True, False)  # glibc: malloc_trim(0) ran (True if it freed)
