"""``python -m meterd.bench.floor``: an owner's CPU against its rate, and the fit of it."""

from __future__ import annotations

import pytest
import trio

from meterd.bench.floor import fit, measure, report


def test_the_fit_finds_the_floor_and_the_slope() -> None:
    floor, slope = fit([(0.0, 0.1), (1000.0, 0.15), (3000.0, 0.25)])
    assert floor == pytest.approx(0.1)
    assert slope == pytest.approx(50e-6)
    floor, slope = fit([(5.0, 0.2), (5.0, 0.4)])  # one rate: no slope
    assert floor == pytest.approx(0.3)
    assert slope == 0.0


def test_a_tiny_run_measures_every_process_at_every_rate() -> None:
    rows = trio.run(measure, 2, [0.0, 2000.0], 0.5, 50, ())
    assert [rate for rate, _, _ in rows] == [0.0, 2000.0]
    assert rows[0][1] == 0.0
    assert rows[1][1] > 0
    for _, _, shares in rows:
        assert {"gateway", "owner-0", "owner-1"} <= set(shares)
    text = report(rows, 2)
    assert "owner-0: CPU = " in text
    assert "µs per event" in text
