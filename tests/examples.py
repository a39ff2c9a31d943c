"""How many examples a property test runs: a quarter of its full count in the default
suite (at least 10), the full count with ``pytest -m slow`` or ``METERD_FULL_EXAMPLES=1``.

A test says its full count, ``@settings(max_examples=examples(300))``; the default suite
then runs 75 fresh random examples on every run (hypothesis' database keeps replaying the
failures it found), and the slow run the 300 that the count was chosen for. Set by
``tests/conftest.py`` before any test module is imported.
"""

from __future__ import annotations

import os

FLOOR = 10  # never fewer in the default suite (nor more than the full count)
DIVISOR = 4

full = os.environ.get("METERD_FULL_EXAMPLES") == "1"


def examples(count: int) -> int:
    """``count`` examples in a full run, a quarter of it (at least ``FLOOR``) otherwise."""
    if full:
        return count
    return max(min(count, FLOOR), count // DIVISOR)
