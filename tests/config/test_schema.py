"""``meterd.schema``: a table declared once is checked key by key, with its key in every
message, and listed in the reference. A small table of its own, not the daemon's config."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterd.schema import Check, Duration, check_fields, key, reference


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Widget:
    name: Annotated[str, key("Its name.", pattern="[a-z]+", invalid="a lower-case name")]
    secret: Annotated[str, key("Its password.", secret=True, pattern="[a-z]+", invalid="a-z")] = (
        field(repr=False)
    )
    size: Annotated[int, key("How big.", unit="cm", ge=1, le=10)] = 5
    colour: Annotated[Colour, key("Its colour.")] = Colour.RED
    wait: Annotated[Duration, key("How long.", ge=Duration(0), was="wait_ms", was_unit="ms")] = (
        Duration(100)
    )
    tags: Annotated[tuple[str, ...], key("Labels.", max_length=2, unit="tags")] = ()
    home: Annotated[Path | None, key("Where it lives.")] = None
    note: str = "not a key"


def check(table: dict[str, Any], env: dict[str, str] | None = None) -> tuple[dict[str, Any], Check]:
    checking = Check(Path("/etc/widgets"), env or {})
    values, ok = check_fields(Widget, table, "widgets[3]", checking)
    assert ok == (not checking.problems)
    return values, checking


def test_a_valid_table_with_defaults() -> None:
    values, checking = check({"name": "w", "secret": "pw", "home": "w.db"})
    widget = Widget(**values)
    assert widget == Widget("w", "pw", 5, Colour.RED, Duration(100), (), Path("/etc/widgets/w.db"))
    assert "pw" not in repr(widget)
    assert checking.warnings == []


def test_every_problem_is_named_by_its_key_at_once() -> None:
    _, checking = check(
        {"name": "W", "secret_env": "NOPE", "size": 11, "colour": "green", "tags": ["a", 1]}
        | {"colur": 1}
    )
    assert checking.problems == [
        "widgets[3].colur: unknown key (did you mean 'colour'?)",
        "widgets[3].name: 'W' is not a lower-case name",
        "widgets[3].secret_env: environment variable 'NOPE' is not set",
        "widgets[3].size: must be between 1 and 10, got 11",
        "widgets[3].colour: 'green' is not one of red, blue",
        "widgets[3].tags[1]: expected a string, got an integer (1)",
    ]


def test_missing_and_wrong_types() -> None:
    _, checking = check({"size": "5", "wait": True, "tags": ["a", "b", "c"], "home": 3})
    assert checking.problems == [
        "widgets[3].name: missing",
        'widgets[3].secret: missing (give secret = "..." or secret_env = "VARIABLE")',
        "widgets[3].size: expected an integer, got a string ('5')",
        "widgets[3].wait: expected a duration like '35d', '12h', '90m', '30s', '100ms' or a"
        " number of seconds, got a boolean (True)",
        "widgets[3].tags: at most 2 tags, got 3",
        "widgets[3].home: expected a string, got an integer (3)",
    ]


def test_a_secret_never_shows() -> None:
    _, checking = check({"name": "w", "secret": "NOT lower case 123"})
    assert checking.problems == ["widgets[3].secret: the secret must hold a-z"]
    _, checking = check({"name": "w", "secret_env": "PW"}, env={"PW": "Hidden Value"})
    assert checking.problems == ["widgets[3].secret_env: environment variable 'PW' must hold a-z"]


def test_an_old_name_is_read_with_a_warning() -> None:
    values, checking = check({"name": "w", "secret": "pw", "wait_ms": 250})
    assert values["wait"] == Duration(250)
    assert checking.warnings == [
        'widgets[3].wait_ms: deprecated, renamed widgets[3].wait: write wait = "250ms"'
    ]


def test_the_reference_lists_each_key_once() -> None:
    rows = {row.key: row for row in reference(Widget, "")}
    assert list(rows) == [
        "`name`",
        "`secret` or `secret_env`",
        "`size`",
        "`colour`",
        "`wait` (was `wait_ms`, in ms)",
        "`tags`",
        "`home`",
    ]
    assert rows["`size`"].value == "integer (cm), between 1 and 10"
    assert rows["`size`"].default == "`5`"
    assert rows["`wait` (was `wait_ms`, in ms)"].default == '`"100ms"`'
    assert rows["`name`"].default == "required"
    assert rows["`colour`"].value == "one of `red`, `blue`"


@given(st.integers(min_value=1, max_value=3650 * 86_400_000))
def test_a_duration_reads_back_as_itself(ms: int) -> None:
    assert Duration.of(str(Duration(ms))) == Duration(ms)


@pytest.mark.parametrize(
    ("written", "ms"),
    [("35d", 35 * 86_400_000), ("1500ms", 1500), (30, 30_000), (0.25, 250), (0.0001, 1)],
)
def test_durations(written: object, ms: int) -> None:
    values, _ = check({"name": "w", "secret": "pw", "wait": written})
    assert values["wait"] == Duration(ms)
