"""Restart intensity against a direct model of OTP's ``supervisor:add_restart/1``.

OTP (``supervisor.erl``)::

    add_restart(Restarts0, Now, Period) ->
        Threshold = Now - Period,
        Restarts1 = lists:takewhile(fun (R) -> R >= Threshold end, Restarts0),
        [Now | Restarts1].

and the supervisor terminates when ``length(Restarts) > MaxR``. The model below
keeps the newest restart first, exactly like the Erlang list, and works in exact
rational arithmetic (OTP counts in integer seconds), so the comparison is free
of float rounding; the times fed to both are dyadic, hence exact as floats too.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisors._intensity import RestartIntensity
from tests.examples import examples


class OtpIntensityModel:
    """OTP's restart list, newest first."""

    def __init__(self, max_restarts: int, max_seconds: Fraction) -> None:
        self.max_restarts = max_restarts
        self.period = max_seconds
        self.restarts: list[Fraction] = []

    def add_restart(self, now: Fraction) -> bool:
        """True for OTP's ``{ok, State}``, False for ``{terminate, State}``."""
        threshold = now - self.period
        kept: list[Fraction] = []
        for r in self.restarts:  # lists:takewhile
            if not r >= threshold:
                break
            kept.append(r)
        self.restarts = [now, *kept]
        return len(self.restarts) <= self.max_restarts


# Times in quarter seconds: exact as floats and as Fractions.
quarters = st.integers(min_value=0, max_value=80)


@settings(max_examples=examples(400), deadline=None)
@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    period_quarters=st.integers(min_value=1, max_value=40),
    gaps=st.lists(quarters, max_size=40),
    start=st.integers(min_value=0, max_value=10_000),
)
def test_add_restart_matches_otp(
    max_restarts: int, period_quarters: int, gaps: list[int], start: int
) -> None:
    period = Fraction(period_quarters, 4)
    real = RestartIntensity(max_restarts, float(period))
    model = OtpIntensityModel(max_restarts, period)
    now = Fraction(start, 4)
    for gap in gaps:
        now += Fraction(gap, 4)
        expected = model.add_restart(now)
        assert real.add_restart(float(now)) is expected, (now, model.restarts)
        assert len(real) == len(model.restarts)


@settings(max_examples=examples(200), deadline=None)
@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    max_seconds=st.integers(min_value=1, max_value=30),
    times=st.lists(st.integers(min_value=0, max_value=200), max_size=40),
)
def test_add_restart_matches_otp_integer_seconds(
    max_restarts: int, max_seconds: int, times: list[int]
) -> None:
    """OTP's own unit: whole seconds of monotonic time (non-decreasing)."""
    real = RestartIntensity(max_restarts, max_seconds)
    model = OtpIntensityModel(max_restarts, Fraction(max_seconds))
    for now in sorted(times):
        assert real.add_restart(now) is model.add_restart(Fraction(now))
        assert len(real) == len(model.restarts)


@pytest.mark.parametrize("max_restarts", [1, 2, 3, 5])
def test_n_restarts_within_period_pass_and_the_next_escalates(max_restarts: int) -> None:
    intensity = RestartIntensity(max_restarts, 10.0)
    for i in range(max_restarts):
        assert intensity.add_restart(100.0 + i), f"restart {i + 1} of {max_restarts}"
    assert not intensity.add_restart(100.0 + max_restarts)


@pytest.mark.parametrize("max_restarts", [1, 2, 3, 5])
def test_all_restarts_at_the_same_instant(max_restarts: int) -> None:
    intensity = RestartIntensity(max_restarts, 1.0)
    for _ in range(max_restarts):
        assert intensity.add_restart(7.0)
    assert not intensity.add_restart(7.0)


def test_restart_exactly_max_seconds_later_still_counts() -> None:
    intensity = RestartIntensity(1, 5.0)
    assert intensity.add_restart(10.0)
    # 15.0 - 5.0 == 10.0: the first restart is inside the (inclusive) window.
    assert not intensity.add_restart(15.0)


def test_restart_just_over_max_seconds_later_is_forgotten() -> None:
    intensity = RestartIntensity(1, 5.0)
    assert intensity.add_restart(10.0)
    assert intensity.add_restart(15.25)
    assert len(intensity) == 1


def test_window_slides_inclusively() -> None:
    intensity = RestartIntensity(2, 4.0)
    assert intensity.add_restart(0.0)
    assert intensity.add_restart(2.0)
    # At 4.0 the window is [0.0, 4.0]: 0.0, 2.0 and 4.0 -> three > two.
    assert not intensity.add_restart(4.0)


def test_window_slides_past_old_restarts() -> None:
    intensity = RestartIntensity(2, 4.0)
    assert intensity.add_restart(0.0)
    assert intensity.add_restart(2.0)
    # At 4.5 the window is [0.5, 4.5]: 0.0 is forgotten -> 2.0, 4.5.
    assert intensity.add_restart(4.5)
    assert len(intensity) == 2


def test_max_restarts_zero_escalates_on_first_restart() -> None:
    intensity = RestartIntensity(0, 5.0)
    assert not intensity.add_restart(0.0)


def test_max_restarts_zero_escalates_even_after_a_long_quiet_time() -> None:
    intensity = RestartIntensity(0, 1.0)
    assert not intensity.add_restart(1_000_000.0)


@given(
    max_restarts=st.integers(0, 4),
    max_seconds=st.integers(1, 5),
    times=st.lists(st.integers(0, 30), max_size=12).map(sorted),
)
def test_would_exceed_predicts_add_restart_without_recording(
    max_restarts: int, max_seconds: int, times: list[int]
) -> None:
    """``would_exceed(now)`` is what ``add_restart(now)`` would answer, negated, and it
    records nothing (so an API may ask before acting)."""
    intensity = RestartIntensity(max_restarts, max_seconds)
    for now in times:
        predicted = intensity.would_exceed(now)
        assert intensity.would_exceed(now) == predicted  # asking changed nothing
        assert intensity.add_restart(now) is not predicted
