"""The store writer's operations: what can be asked of it, as typed values.

Rules:

* An operation is a frozen value. It says *what* to write, never how or when; the writer
  (:mod:`meterd.store._writer`) queues it, a group transaction (:mod:`meterd.store._group`)
  writes it, and its outcome goes back to whoever queued it.
* **Client operations** come from the other layers: :class:`BatchAppend` (a producer batch,
  the durability unit), :class:`Append` (one account's events), :class:`Checkpoint`,
  :class:`Quarantine`, :class:`Release`, :class:`Discard` (an operator's decision on
  quarantined events), :class:`AlertRuleWrite` and :class:`Barrier`. Each answers exactly
  once, after its group's ``COMMIT`` (or with the failure if the group failed), in queue
  order.
* **Housekeeping operations** come from the housekeeper (:mod:`meterd.store._housekeeping`)
  on timers, while the writer is idle: :class:`Probe` (a one-row write while commits fail),
  :class:`IndexPass` (journal-index passes written early), :class:`SweepSlice` (a slice of a
  dedupe sweep). Work that rides in every group anyway (the passes that are due, audit
  pruning, a sweep slice under load) is decided by the group itself, not queued.
* Nothing here touches SQLite or Trio: these are plain data, so tests build and queue them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from meterd.model import Event

from .errors import InvalidEvents

__all__ = [
    "AlertRuleWrite",
    "Append",
    "AppendResult",
    "Barrier",
    "BatchAppend",
    "Checkpoint",
    "ClientOperation",
    "Discard",
    "QuarantineDecision",
    "Release",
    "Settled",
    "Unchanged",
    "Encoded",
    "Housekeeping",
    "IndexPass",
    "LogPosition",
    "Operation",
    "Probe",
    "Quarantine",
    "RejectedEvent",
    "SweepSlice",
    "WindowMerge",
    "WindowWrite",
    "accepted_result",
]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The verdicts of one ``append``: indexes into the submitted ``events``.

    ``batch_id`` is the journal batch holding the accepted events (``None`` if none was
    accepted). A duplicate is an event whose ``(account, id)`` is stored (or accepted earlier
    in the same group or call) with the same fingerprint; a conflict is one stored with a
    different fingerprint (``id_conflict``): it is not written and the stored one stays.
    ``too_late``: events older than the dedupe horizon ``horizon`` (set when there are
    some): ``time_out_of_range``, with :func:`~meterd.store.retention.too_late_message`;
    not written, and decided before any dedupe lookup (:mod:`meterd.store.retention`).
    """

    batch_id: int | None
    accepted: list[int]
    duplicates: list[int]
    conflicts: list[int]
    too_late: list[int] = field(default_factory=list)
    horizon: int | None = None


_new_result = object.__new__
(
    _set_batch_id,
    _set_accepted,
    _set_duplicates,
    _set_conflicts,
    _set_too_late,
    _set_horizon,
) = (
    AppendResult.__dict__[name].__set__
    for name in ("batch_id", "accepted", "duplicates", "conflicts", "too_late", "horizon")
)


def accepted_result(batch_id: int, count: int) -> AppendResult:
    """``AppendResult(batch_id, list(range(count)), [], [])`` (every event accepted), in
    about half the time: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, this sets the slots directly (one result per account of a
    batch, on the writer's hot path). An ordinary :class:`AppendResult`, equal to that."""
    result: AppendResult = _new_result(AppendResult)
    _set_batch_id(result, batch_id)
    _set_accepted(result, [0] if count == 1 else list(range(count)))
    _set_duplicates(result, [])
    _set_conflicts(result, [])
    _set_too_late(result, [])
    _set_horizon(result, None)
    return result


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event of a producer batch rejected before the store (protocol.md §2.3) that names
    a valid ``account``: it gets an ``audit`` row with the batch.

    ``meter``, ``time`` and ``properties`` are the event's where they were valid (``None``
    where not), so that an explanation can place it in a window."""

    account: str
    event_id: str | None
    code: str
    message: str
    meter: str | None = None
    time: int | None = None
    properties: tuple[tuple[str, str], ...] | None = None
    index: int | None = None  # its position in the producer's batch (the gateway's slices)


WindowWrite: TypeAlias = tuple[str, int, str, bytes]
"""``(meter, start, dims, state)`` of one window row."""
WindowMerge: TypeAlias = Callable[[str, bytes, bytes], bytes]
"""``merge(meter, stored, delta)``: the state of a window holding both (see
:meth:`Writer.checkpoint <meterd.store.Writer.checkpoint>`)."""
Encoded: TypeAlias = tuple[list[bytes], list[int], list[int], list[int]]
"""A batch's events ready to store, in order: packed rows, fingerprints, dedupe keys, times
in seconds (floor: the dedupe rows' ``time_s``)."""


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where a batch sits in a replicated log (cluster mode, docs/cluster.md): ``seq`` in
    ``log``, right after ``prev`` (the position the store must hold, 0 for none). The
    store writes ``seq`` as ``log``'s applied position in the batch's transaction, or fails
    the batch alone (:class:`~meterd.store.errors.PositionMismatch`) if it holds another.

    ``fence`` (cluster mode's fencing): called right before the group transaction holding
    the batch commits; a reason (str) instead of None rolls the whole group back
    (:class:`~meterd.store.errors.Fenced`): the owner's lease is no longer certainly held."""

    log: str
    seq: int
    prev: int
    fence: Callable[[], str | None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class BatchAppend:
    """One producer batch, grouped by account (each account once): each accepted group
    becomes a journal batch; its duplicates, conflicts and ``rejected`` get audit rows.

    ``encoded`` is the batch's events ready to store, computed when it is queued (on the
    Trio thread), or the error naming the first that cannot be stored; ``None``: the group
    transaction encodes them."""

    groups: tuple[tuple[str, tuple[Event, ...]], ...]
    received_at: int
    producer: str | None = None
    seq: int | None = None
    rejected: tuple[RejectedEvent, ...] = ()
    encoded: Encoded | InvalidEvents | None = None
    position: LogPosition | None = None  # cluster mode: applied with the batch's rows


@dataclass(frozen=True, slots=True)
class Append:
    """One account's events: a :class:`BatchAppend` of one group."""

    account: str
    events: tuple[Event, ...]
    received_at: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An account's windows and its watermark (the last journal batch they include).

    With ``merge``, ``windows`` are deltas merged into the stored windows in the same
    transaction. ``rows``: more rows to write in the checkpoint's transaction, by table
    (see :data:`meterd.store._group.TABLES`); empty for a plain checkpoint."""

    account: str
    windows: tuple[WindowWrite, ...]
    watermark: int
    merge: WindowMerge | None = None
    rows: tuple[tuple[str, tuple[tuple[object, ...], ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Event ``event_id`` of journal batch ``batch_id`` is poison (``error``: why)."""

    account: str
    batch_id: int
    event_id: str
    error: str
    at: int


@dataclass(frozen=True, slots=True)
class Release:
    """An operator re-applies quarantined events of ``account`` (``event_ids``: those ids;
    ``None``: every one): in one transaction their copies are appended to the journal as a
    new batch of the account, their ``quarantine`` rows deleted and ``quarantine_log`` rows
    written naming ``by`` and ``reason`` (:mod:`meterd.store._quarantine`)."""

    account: str
    event_ids: tuple[str, ...] | None
    by: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class Discard:
    """An operator sets quarantined events of ``account`` aside for good: their
    ``quarantine`` rows are deleted and ``quarantine_log`` rows written naming ``by`` and
    ``reason``, in one transaction; they never count."""

    account: str
    event_ids: tuple[str, ...]
    by: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class Settled:
    """A quarantined copy an operator released or discarded: event ``event_id`` of journal
    batch ``batch_id``, quarantined at ``quarantined_at`` because of ``error``."""

    event_id: str
    batch_id: int
    error: str
    quarantined_at: int


@dataclass(frozen=True, slots=True)
class Unchanged:
    """An id asked for that was already ``action`` (``released``, ``discarded``) by ``by``
    at ``at``: nothing to do (``release_batch``: the batch holding its counted copy)."""

    event_id: str
    action: str
    by: str
    at: int
    release_batch: int | None


@dataclass(frozen=True, slots=True)
class QuarantineDecision:
    """What a :class:`Release` or :class:`Discard` did: ``settled``, the copies taken out
    of quarantine; ``events``, the released events as appended (in journal batch
    ``batch_id``, ``None`` when nothing was released), for delivery to the account's actor;
    ``unchanged``, the ids asked for that were already so."""

    account: str
    action: str  # "released" | "discarded"
    batch_id: int | None
    settled: tuple[Settled, ...]
    events: tuple[Event, ...]
    unchanged: tuple[Unchanged, ...]


@dataclass(frozen=True, slots=True)
class AlertRuleWrite:
    """Create (``rule`` set) or delete (``rule`` None) the alert rule ``name`` of
    ``account`` (docs/alerts.md, "Rules of one account"), audited: ``by`` and ``at``.

    ``rule``: ``(meter, period, threshold, spend, webhook)``, the checked rule as text.
    Outcome: True when it was written; False when a live rule of that name already exists
    (create) or none does (delete), and nothing was written."""

    account: str
    name: str
    by: str
    at: int
    rule: tuple[str, str, str | None, str | None, str] | None = None


@dataclass(frozen=True, slots=True)
class Barrier:
    """Answered once every operation queued before it is committed (or has failed)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """While commits fail: a group that writes one row (changed and changed back) and
    nothing else, so the writer learns that commits succeed again."""


@dataclass(frozen=True, slots=True)
class IndexPass:
    """Journal-index passes written while idle, ahead of their turn (a backlog after a
    burst, or passes to try again after a failed one)."""


@dataclass(frozen=True, slots=True)
class SweepSlice:
    """A group for the next slice of a dedupe sweep under way (or due) while idle."""


ClientOperation: TypeAlias = (
    BatchAppend | Append | Checkpoint | Quarantine | Release | Discard | AlertRuleWrite | Barrier
)
Housekeeping: TypeAlias = Probe | IndexPass | SweepSlice
Operation: TypeAlias = ClientOperation | Housekeeping
