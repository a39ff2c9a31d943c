"""The garbage collector's pauses are measured and exported (meterd/memory.py)."""

from __future__ import annotations

import gc
import itertools

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


async def test_young_collections_run_on_a_timer_and_the_middle_one_every_tenth(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, float]] = []
    pauses = memory.GcPauses(
        lambda generation, seconds: seen.append((generation, trio.current_time()))
    )
    gc.disable()  # only the timer's collections
    pauses.install()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(memory.collect_young)
            await trio.sleep(2.05)
            nursery.cancel_scope.cancel()
    finally:
        pauses.remove()
        gc.enable()
    assert [generation for generation, _ in seen] == ([0] * 9 + [1]) * 2
    assert [round(at, 3) for _, at in seen] == [round(0.1 * tick, 3) for tick in range(1, 21)]
