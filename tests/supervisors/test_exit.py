"""Exit reasons name the error that ended a child, even when it came wrapped in a group."""

from __future__ import annotations

import trio

from supervisors._exit import exit_from_exception


def _nursery_crash() -> BaseException:
    async def fail() -> None:
        raise ValueError("the port is in use")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)

    try:
        trio.run(main)
    except BaseException as error:  # the group is what we study
        return error
    raise AssertionError("main did not fail")


def test_a_crashed_nursery_is_reported_by_its_first_leaf() -> None:
    group = _nursery_crash()
    assert isinstance(group, BaseExceptionGroup)
    exit = exit_from_exception(group)
    assert exit.kind == "crash"
    assert exit.error is group  # kept whole for whoever wants the tree
    assert exit.error_type == "ValueError"
    assert exit.message == "the port is in use"
    where = exit.where()
    assert where is not None
    assert where.endswith(" in fail")
    assert str(exit) == "crash (ValueError: the port is in use)"


def test_a_plain_error_is_reported_as_itself() -> None:
    exit = exit_from_exception(KeyError("k"))
    assert exit.error_type == "KeyError"
    assert exit.where() is None  # never raised, so no frame
