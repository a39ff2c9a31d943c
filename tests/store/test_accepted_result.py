"""``accepted_result`` (the writer's fast constructor for an all-accepted group) builds an
ordinary, frozen :class:`AppendResult` equal to the dataclass's own."""

from __future__ import annotations

import dataclasses

import pytest

from meterd.store._ops import AppendResult, accepted_result


@pytest.mark.parametrize("count", [1, 2, 7])
def test_it_is_the_dataclass_result(count: int) -> None:
    result = accepted_result(41, count)
    assert result == AppendResult(41, list(range(count)), [], [])
    assert type(result) is AppendResult
    assert result.too_late == []
    assert result.horizon is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.batch_id = 3  # type: ignore[misc]
    other = accepted_result(42, count)
    assert other.duplicates is not result.duplicates  # fresh lists, never shared
    assert other.accepted is not result.accepted
