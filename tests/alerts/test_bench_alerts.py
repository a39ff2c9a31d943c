"""The alerts benchmark runs (figures printed, never asserted)."""

from __future__ import annotations

import pytest

from meterd.bench import alerts


def test_the_alerts_benchmark_prints_its_rows(capsys: pytest.CaptureFixture[str]) -> None:
    alerts.evaluation(repeats=1, batches=2)
    alerts.delivery(count=10, accounts=2, concurrency=2, repeats=1)
    out = capsys.readouterr().out
    assert "added" in out
    assert "DeliveryService" in out
    assert "bare httpx POSTs" in out
