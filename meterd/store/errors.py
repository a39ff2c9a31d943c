"""The store's exceptions. Every message names the database or the operation and says what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class StoreVersionError(StoreError):
    """The database has a schema this meterd cannot use (newer, or not yet migrated)."""


class NotAStoreError(StoreError):
    """The file is not a SQLite database, or a SQLite database of another application."""


class StoreLostCommitsError(StoreError):
    """The database holds fewer journal batches than were committed (its write-ahead log
    was deleted, or the file replaced by an older copy): :mod:`meterd.store.commitmark`."""


class StoreCorruptError(StoreError):
    """Stored data contradicts itself (a payload that does not decode, a missing batch)."""


class CommitFailed(StoreError):
    """The group transaction an operation was part of failed and was rolled back.

    Nothing of that group was written; the operation may be retried. ``__cause__``
    is the underlying :mod:`sqlite3` error (for example ``database or disk is full``).
    """


class Fenced(StoreError):
    """A group holding a log-positioned batch (cluster mode) was rolled back before its
    commit because the batch's ``fence`` said the owner's lease is no longer certainly
    held: another node may be deciding for the shard. Nothing of the group was written."""


class InvalidEvents(StoreError, ValueError):
    """An event of an ``append`` cannot be stored (for example a ``float`` quantity).

    Only that operation fails; the rest of its group is committed.
    """


class PositionMismatch(StoreError):
    """A batch append carrying a log position (cluster mode) whose predecessor is not the
    position this store last applied: a slice before it was not committed (its group
    failed), or another applier wrote the log. Nothing of the operation was written; the
    applier re-reads the stored position and replays the log from there."""

    def __init__(self, log: str, stored: int, expected: int, seq: int) -> None:
        super().__init__(
            f"log {log!r}: the slice at sequence {seq} follows sequence {expected}, but this"
            f" store has applied up to {stored}; replay the log from {stored + 1}"
        )
        self.log = log
        self.stored = stored
        self.expected = expected
        self.seq = seq


class InvalidCursor(StoreError, ValueError):
    """An ``events`` cursor that this store did not issue (an API 400)."""


class ReaderClosed(StoreError):
    """The :class:`~meterd.store.reader.Reader` was closed."""


class QuarantineRefused(StoreError):
    """A release or discard of quarantined events was refused, nothing of it written:
    ``problems`` are ``(event_id, code, message)``, one per id asked for that cannot be
    acted on (``unknown_event``, ``not_quarantined``, ``discarded``, ``already_released``)."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        super().__init__("; ".join(message for _, _, message in problems))
        self.problems = problems
