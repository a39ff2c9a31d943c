"""The options several commands share (meterd/cli/_options.py)."""

from __future__ import annotations

import click
import pytest

from meterd.cli._options import name_values


def test_name_values_by_name_a_later_one_winning() -> None:
    given = ("size=std", "app=a=b", "size=perf", "empty=")
    assert name_values(given, "--dim") == {"size": "perf", "app": "a=b", "empty": ""}
    assert name_values((), "--dim") == {}


@pytest.mark.parametrize("option", ["--dim", "--property"])
@pytest.mark.parametrize("item", ["size", "=std"])
def test_an_item_that_is_not_name_value_names_its_option(option: str, item: str) -> None:
    with pytest.raises(click.BadParameter) as caught:
        name_values(("ok=1", item), option)
    assert caught.value.format_message() == (
        f"Invalid value for '{option}': {item!r} is not NAME=VALUE"
    )
