"""Times on the operator command line: epoch ms or ISO-8601 (naive = UTC), exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from meterd.cli._times import EPOCH, format_time, humanise, parse_time
from meterd.cli.main import main

# 0001-01-01 .. 9999-12-31 in epoch ms: what datetime can hold
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999


@given(st.integers(MIN_MS, MAX_MS))
def test_formatted_times_parse_back_to_the_same_millisecond(ms: int) -> None:
    assert parse_time(format_time(ms)) == ms
    assert parse_time(str(ms)) == ms


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)),
    st.integers(-14 * 60, 14 * 60),
)
def test_an_offset_moves_the_instant_and_no_zone_means_utc(moment: datetime, minutes: int) -> None:
    naive = moment.isoformat()
    as_utc = parse_time(naive)
    assert as_utc == parse_time(naive + "Z") == parse_time(naive + "+00:00")
    # the same wall-clock time at UTC+minutes is that many minutes earlier
    zone = timezone(timedelta(minutes=minutes))
    assert parse_time(moment.replace(tzinfo=zone).isoformat()) == as_utc - minutes * 60_000
    # checked against datetime's own arithmetic, independently of parse_time
    expected = (moment.replace(tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
    assert as_utc == expected


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("1795611600000", 1_795_611_600_000),
        ("2026-11-25", 1_795_564_800_000),
        ("2026-11-25T13:00", 1_795_611_600_000),
        ("2026-11-25 13:00:00Z", 1_795_611_600_000),
        ("2026-11-25T14:00:00+01:00", 1_795_611_600_000),
        ("2026-11-25T13:00:00.250Z", 1_795_611_600_250),
        ("1969-12-31T23:59:59.999Z", -1),
        (" 2026-11-25T13:00:00Z ", 1_795_611_600_000),
    ],
)
def test_examples(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("yesterday", "neither epoch milliseconds nor an ISO-8601 time"),
        ("2026-13-01", "neither epoch milliseconds"),
        ("1.5", "neither epoch milliseconds"),
        ("2026-11-25T13:00:00.0005Z", "fraction of a millisecond"),
    ],
)
def test_bad_times_are_refused_saying_why(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_time(text)


def test_format_time() -> None:
    assert format_time(1_795_611_600_000) == "2026-11-25T13:00:00Z"
    assert format_time(1_795_611_600_007) == "2026-11-25T13:00:00.007Z"
    assert format_time(None) == "-"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (250, "250ms"),
        (12_000, "12s"),
        (250_999, "4m 10s"),
        (7_500_000, "2h 5m"),
        (3 * 86_400_000 + 4 * 3_600_000 + 59_000, "3d 4h"),
        (86_400_000, "1d 0h"),
        (-5_000, "-5s"),
    ],
)
def test_humanise(ms: int, text: str) -> None:
    assert humanise(ms) == text


def test_a_bad_time_option_is_a_usage_error_naming_the_option() -> None:
    result = CliRunner().invoke(
        main, ["usage", "acme", "--meter", "m", "--from", "soon", "--to", "0"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--from'" in result.output
    assert "'soon' is neither epoch milliseconds nor an ISO-8601 time" in result.output
    assert "Traceback" not in result.output


def test_seconds_given_as_milliseconds_draw_a_warning() -> None:
    # nothing listens on port 9: the warning comes while parsing, before any request
    result = CliRunner().invoke(
        main,
        ["usage", "acme", "--meter", "m", "--from", "1764075600", "--to", "1795611600000"],
        env={"METERD_URL": "http://127.0.0.1:9", "METERD_TOKEN": "t0ken-x"},
    )
    assert "warning: --from 1764075600 is read as epoch milliseconds" in result.stderr
    assert "1970-01-21T10:01:15.600Z" in result.stderr
    assert "--to" not in result.stderr
