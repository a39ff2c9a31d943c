"""meterd's durable store: the journal, the dedupe index, checkpointed windows (SQLite).

* :class:`Store` — one store file's writer and reader, as the other layers hold them.
* :class:`Writer` — the single writer: a small server of typed operations
  (:mod:`meterd.store._ops`) committed in groups (:mod:`meterd.store._group`), with its
  housekeeper (:mod:`meterd.store._housekeeping`) queuing :class:`Probe`,
  :class:`IndexPass` and :class:`SweepSlice` on timers (run it as a supervised task:
  ``sv.task_spec("store-writer", writer.run)``).
* :class:`Reader` / :func:`open_reader` — read-only queries (actor recovery, usage, events).
* :func:`open_database` — open and migrate a store (:mod:`meterd.store.schema`).
* :mod:`meterd.store.codec` — the journal's batch payload.

``docs/accounts.md`` is the design this implements.
"""

from ._appends import conflict_message
from ._ops import (
    AppendResult,
    Housekeeping,
    IndexPass,
    LogPosition,
    Probe,
    QuarantineDecision,
    RejectedEvent,
    Settled,
    SweepSlice,
    Unchanged,
    WindowMerge,
    WindowWrite,
)
from ._rounds import CommitRounds
from ._writer import DoneCallback, Writer, WriterStats
from .errors import (
    CommitFailed,
    Fenced,
    InvalidCursor,
    InvalidEvents,
    NotAStoreError,
    PositionMismatch,
    QuarantineRefused,
    ReaderClosed,
    StoreCorruptError,
    StoreError,
    StoreLostCommitsError,
    StoreVersionError,
)
from .reader import (
    AuditEntry,
    AuditPage,
    EventsPage,
    LoadedAccount,
    QuarantinedEvent,
    QuarantineLogEntry,
    Reader,
    StoredWindow,
    WindowRow,
    open_reader,
)
from .retention import too_late_message
from .schema import SCHEMA_VERSION, open_database, open_readonly
from .store import Store

__all__ = [
    "SCHEMA_VERSION",
    "AppendResult",
    "AuditEntry",
    "AuditPage",
    "CommitFailed",
    "CommitRounds",
    "DoneCallback",
    "EventsPage",
    "Housekeeping",
    "IndexPass",
    "InvalidCursor",
    "InvalidEvents",
    "LoadedAccount",
    "LogPosition",
    "NotAStoreError",
    "Fenced",
    "PositionMismatch",
    "Probe",
    "QuarantineDecision",
    "QuarantineLogEntry",
    "QuarantineRefused",
    "QuarantinedEvent",
    "Reader",
    "ReaderClosed",
    "RejectedEvent",
    "StoreCorruptError",
    "Store",
    "StoreError",
    "StoreLostCommitsError",
    "StoreVersionError",
    "Settled",
    "StoredWindow",
    "SweepSlice",
    "Unchanged",
    "WindowMerge",
    "WindowRow",
    "WindowWrite",
    "Writer",
    "WriterStats",
    "conflict_message",
    "open_database",
    "open_reader",
    "open_readonly",
    "too_late_message",
]
