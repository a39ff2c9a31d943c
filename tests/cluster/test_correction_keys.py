"""A correction's idempotency key in the shard's log (docs/cluster.md "Corrections through
the log"): the owner dedupes by key in the transaction that records the correction, so a
retried POST published again under a new message id, and a message an owner that lost its
lease recorded before the next owner replays the log, are each recorded once. No NATS here:
the log is handed to the applier as it would read it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import trio

from meterd.cluster._nats import LogMessage
from meterd.partitions import encode, shard_files
from meterd.partitions._messages import Correction
from tests.cluster.cells import SHARD, write_config
from tests.cluster.test_determinism import ACCOUNTS, correction, messages, replay

HOUR = 3_600_000


def keyed(number: int, kind: str, what: object, key: str) -> Correction:
    """Correction ``number`` of ``ACCOUNTS[0]`` under idempotency ``key``."""
    return msgspec.structs.replace(correction(number, kind, ACCOUNTS[0], what), key=key)


def at(seq: int, message: Correction) -> LogMessage:
    return LogMessage(seq, f"meterd.log.{SHARD}", encode(message), message.id, seq)


def test_a_correction_published_again_under_a_new_id_is_recorded_once() -> None:
    # a POST answered 503 (not applied in time) and retried: the node publishes it again,
    # with a new message id and its own time stamp, the same key
    events = messages([[(ACCOUNTS[0], "e0", 2, 0)]])
    first = keyed(2, "adjust", 5, "ticket-1")
    retried = msgspec.structs.replace(keyed(3, "adjust", 5, "ticket-1"), reason=first.reason)
    void = keyed(4, "void", "e0", "void-e0")
    void_again = msgspec.structs.replace(keyed(5, "void", "e0", "void-e0"), reason=void.reason)
    log = [*events, at(10, first), at(11, retried), at(12, void), at(13, void_again)]
    with tempfile.TemporaryDirectory() as tmp:
        found = trio.run(replay, Path(tmp) / "a", log)
    adjustments = found["billing"]["adjustments"]
    voids = found["billing"]["voids"]
    assert len(adjustments) == 1
    assert adjustments[0][-1] == "ticket-1"
    assert len(voids) == 1
    # every sequence maps to the row it recorded or found: a replay finds each by sequence
    assert [row[0] for row in found["billing"]["log_corrections"]] == [10, 11, 12, 13]
    assert {row[2] for row in found["billing"]["log_corrections"] if row[1] == "adjust"} == {1}
    # all four were applied: the two retries found their key
    assert found["applied_corrections"] == 4


def test_a_changed_request_under_a_key_is_refused_where_the_log_is_applied() -> None:
    events = messages([[(ACCOUNTS[0], "e0", 2, 0)]])
    first = keyed(2, "adjust", 5, "ticket-1")
    changed = msgspec.structs.replace(keyed(3, "adjust", 6, "ticket-1"), reason=first.reason)
    with tempfile.TemporaryDirectory() as tmp:
        found = trio.run(replay, Path(tmp) / "a", [*events, at(10, first), at(11, changed)])
    [row] = found["billing"]["adjustments"]
    assert row[7] == "5"  # quantity: the first one's
    assert [row[0] for row in found["billing"]["log_corrections"]] == [10]


def test_an_owner_that_recorded_a_correction_unfenced_and_the_next_one_record_it_once() -> None:
    # the old owner lost its lease just before its billing write and recorded the correction
    # from sequence 10 anyway (its store's commit was fenced); the node that takes the shard
    # over applies the log from its snapshot: sequence 10 again, and the client's retry of
    # the POST that had no answer, published at sequence 11
    events = messages([[(ACCOUNTS[0], "e0", 2, 0)]])
    first = keyed(2, "adjust", 5, "ticket-1")
    retried = msgspec.structs.replace(keyed(3, "adjust", 5, "ticket-1"), reason=first.reason)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        old = trio.run(replay, root / "old", [*events, at(10, first)])
        assert len(old["billing"]["adjustments"]) == 1
        billing = shard_files(write_config(root / "old"), SHARD).billing
        new = trio.run(
            lambda: replay(root / "new", [*events, at(10, first), at(11, retried)], billing=billing)
        )
    assert new["billing"]["adjustments"] == old["billing"]["adjustments"]
    assert [row[0] for row in new["billing"]["log_corrections"]] == [10, 11]


def test_a_log_written_before_keys_is_applied_as_before() -> None:
    events = messages([[(ACCOUNTS[0], "e0", 2, 0)]])
    old = correction(2, "adjust", ACCOUNTS[0], 5)
    assert old.key == ""
    with tempfile.TemporaryDirectory() as tmp:
        found = trio.run(replay, Path(tmp) / "a", [*events, at(10, old)])
    [row] = found["billing"]["adjustments"]
    assert row[-1] is None  # no key: recorded as before keys
