"""``python -m meterd.bench.validate`` runs and prints every row (never their values)."""

from __future__ import annotations

import gc

import pytest

from meterd.bench.validate import main


def test_the_validate_bench_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    threshold = gc.get_threshold()
    try:
        main(["--events", "1000", "--accounts", "100", "--batch", "100", "--repeats", "1"])
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
    out = capsys.readouterr().out
    assert "1000 events in 10 batches of 100, 100 accounts" in out
    for row in (
        "peer: msgpack decode alone",
        "main: decode + validate_precise per event",
        "fast: decode + validate per event",
        "fast: decode + validate_batch",
        "speed-up of 'fast: decode + validate_batch' over main:",
        "peer: msgspec decode alone",
        "typed: msgspec decode + accept_typed",
        "over 'fast: decode + validate_batch' (the baseline):",
    ):
        assert row in out
