"""The gateway process's garbage collector is set up as one process's is (meterd.memory):
its thresholds, start-up objects frozen, pauses measured (no collections on a timer: the
gateway holds no actors' cells)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import meterd.gateway
from meterd import memory
from tests.partitions.gateway_harness import write_gateway_config


async def test_the_gateway_tunes_the_collector_as_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_gateway_config(tmp_path, owners=2)
    seen: dict[str, Any] = {}

    async def run(
        root: object,
        config: object,
        *,
        on_started: object,
        beside: Sequence[Callable[[], Any]] = (),
    ) -> None:  # in place of running the tree: what serve_gateway set up by then
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()
        seen["beside"] = list(beside)
        seen["pauses"] = [hook for hook in gc.callbacks if isinstance(hook, memory.GcPauses)]

    monkeypatch.setattr(meterd.gateway, "run_until_signalled", run)
    before = gc.get_threshold()
    try:
        await meterd.gateway.serve_gateway(config)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"] == memory.THRESHOLDS  # not Python's 700 allocations
    assert seen["frozen"] > 0
    assert memory.collect_on_schedule not in seen["beside"]
    assert len(seen["pauses"]) == 1  # observed into the gateway's meterd_gc_pause_seconds
    assert not [hook for hook in gc.callbacks if isinstance(hook, memory.GcPauses)]  # removed
