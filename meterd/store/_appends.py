"""The appends of a group transaction: journal batches, exact dedupe, their audit rows.

Rules:

* :class:`Appends` is the append-side state of **one** group transaction (the next batch
  id, the batches and dedupe rows it added, the horizon); it lives on the writer thread for
  that transaction only and is thrown away if the group rolls back.
* Dedupe is exact: the ``dedupe`` table maps a 63-bit key of ``(account, id)``
  (:func:`~meterd.store.schema.dedupe_row_key`, built on ``Event.dedupe_key()``) to the
  batch holding the event and its ``Event.fingerprint()``. When a key is found, it is
  checked to really be this ``(account, id)``: first in ``dedupe_overflow`` (where an
  ``(account, id)`` whose key was already taken by another pair is kept, keyed by the
  text), then by reading the ids of the stored batch. Only a true match counts as duplicate
  (same fingerprint) or conflict (different fingerprint). Events earlier in the same group,
  or the same call, count as stored.
* Appends write neither a journal index entry nor ``dedupe`` rows: those are held for the
  passes (:mod:`meterd.store.journal_index`) in :attr:`Appends.new_dedupe_by_slice`.
* The dedupe horizon (:mod:`meterd.store.retention`) is raised for each operation before it
  is decided; an event older than it is ``time_out_of_range``, whatever the index holds.
* Each duplicate, ``id_conflict`` and rejected event becomes an ``audit`` row in the same
  transaction as its batch; a batch of new events writes none and does no audit work.
* An append whose events cannot be encoded fails alone with :class:`InvalidEvents`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain, filterfalse, repeat
from operator import attrgetter, itemgetter
from typing import Final, TypeAlias

import msgpack  # type: ignore[import-untyped]
import msgspec

from meterd.model import Event

from . import codec, retention, schema
from ._ops import Append, AppendResult, BatchAppend, Encoded, accepted_result
from ._rows import insert_rows
from .errors import InvalidEvents, StoreCorruptError
from .journal_index import DedupeRow, JournalTail, NewBatch
from .retention import too_late_message

__all__ = ["Appends", "check_groups", "conflict_message", "encode_batch"]


def conflict_message(account: str, event_id: str) -> str:
    """Why an ``id_conflict`` was rejected (the ack's message and the audit row's)."""
    return (
        f"id {event_id!r} was already counted for account {account!r} with a different meter,"
        " quantity, time or properties; a re-sent event must be identical (new usage needs a"
        " new id)"
    )


BatchRow: TypeAlias = tuple[int, str, int, int, bytes, int, int]
"""An ``event_batches`` row: ``(batch_id, account, received_at, count, payload, min_time,
max_time)``."""
_ONE: Final = b"\x91"  # the msgpack header of a one-item array (a one-event payload)
_time_of: Final = attrgetter("time")
_account_of_row: Final = itemgetter(1)  # of a BatchRow
_batch_of_row: Final = itemgetter(0)  # of a BatchRow
_batch_of_dedupe: Final = itemgetter(1)  # of a DedupeRow: (key, batch_id, fingerprint, time_s)
_key_of_dedupe: Final = itemgetter(0)
_held_of_dedupe: Final = itemgetter(1, 2, 3)  # what the tail holds for a key
_new_batch_of_row: Final = itemgetter(1, 0, 5, 6)  # a NewBatch: account, batch, min, max time
AuditRow: TypeAlias = tuple[
    str, str, str | None, str | None, str | None, str | None, int | None,
    str | None, str | None, int | None, int | None, int, int,
]  # fmt: skip
"""``(account, kind, event_id, code, message, meter, time, properties, producer, seq,
batch_id, received_at, position)`` of one ``audit`` row."""
OverflowRow: TypeAlias = tuple[str, str, int, int, int]
"""``(account, event_id, batch_id, fingerprint, time_s)``: a ``dedupe_overflow`` row."""


def _properties_json(properties: tuple[tuple[str, str], ...] | None) -> str | None:
    if properties is None:
        return None
    return json.dumps(dict(properties), separators=(",", ":"), ensure_ascii=False)


StoredRow: TypeAlias = tuple[int, int, "int | None", bool]
"""A dedupe row found for a key: ``(batch_id, fingerprint, time_s, in_table)``; ``in_table``:
in the ``dedupe`` table (not in the tail, nor added by this transaction)."""


def check_groups(groups: Iterable[tuple[str, Sequence[Event]]]) -> None:
    """``ValueError`` for the first group of ``groups`` whose account was seen already or
    that holds an event of another account (:meth:`Writer.submit_batch`'s check, spelled
    out for its message)."""
    seen: set[str] = set()
    for account, events in groups:
        if account in seen:
            raise ValueError(f"account {account!r} has two groups in one batch")
        seen.add(account)
        for index, event in enumerate(events):
            if event.account != account:
                raise ValueError(
                    f"event {index} (id {event.id!r}) is of account {event.account!r},"
                    f" submitted for account {account!r}"
                )
    raise AssertionError("the fast check of submit_batch found a problem this one did not")


def encode_batch(
    groups: Sequence[tuple[str, Sequence[Event]]], buckets: dict[str, int]
) -> Encoded | InvalidEvents:
    """Every event of ``groups`` ready to store (``buckets`` caches ``account_bucket``), or
    the error naming the first that cannot be stored."""
    for account in [account for account, _ in groups if account not in buckets]:
        buckets[account] = schema.account_bucket(account)
    try:
        return _encode_groups(groups, buckets)
    except Exception:  # the caller's data: this operation fails, not the group
        for account, group in groups:
            failure = _invalid(account, group)
            if failure.__cause__ is not None:
                return failure
        return InvalidEvents("a batch has an event that cannot be stored")


_FINGERPRINT: Final = hashlib.blake2b(digest_size=8)
"""An empty digest to copy: ``copy()`` then ``update()`` costs less than a new
``blake2b(data, digest_size=8)`` (its keyword arguments parsed each time)."""


_PACK: Final = msgspec.msgpack.Encoder().encode
"""msgspec's msgpack: the same bytes as ``msgpack.Packer(use_bin_type=True)`` for str, int
(64 bits), dict, tuple (tests/store/test_codec.py), in a third less time; a
``msgpack.ExtType`` (an int beyond 64 bits) it would write as an array, so such a row is
packed by msgpack (:data:`_pack_ext`)."""
_pack_ext: Final = msgpack.Packer(use_bin_type=True).pack


def _encode_groups(
    groups: Sequence[tuple[str, Sequence[Event]]], buckets: dict[str, int]
) -> Encoded:
    """:func:`encode_batch`'s work: each event's packed row and fingerprint as
    :func:`codec.encode_rows` computes them and its time in seconds, in one pass over the
    events (the writer's hot path), and the dedupe keys of :func:`schema.dedupe_row_keys`.
    Raises what those would (the caller finds the event to name)."""
    pack = _PACK  # the same bytes as msgpack's Packer(use_bin_type=True) for these values
    fresh = _FINGERPRINT.copy
    from_bytes = int.from_bytes
    stored = codec.stored_quantity
    packed: list[bytes] = []
    fingerprints: list[int] = []
    seconds: list[int] = []
    add_row = packed.append
    add_fingerprint = fingerprints.append
    add_second = seconds.append
    for _, events in groups:
        for event in events:
            value, text = stored(event.quantity)
            if type(value) is not int and type(value) is not str:
                pack = _pack_ext  # an ExtType (beyond 64 bits): msgpack's own
            time = event.time
            properties = event.properties
            mapping = dict(properties)
            if len(mapping) != len(properties):
                raise ValueError(f"event {event.id!r} has a property key twice")
            if type(time) is not int or type(event.received_at) is not int:
                raise TypeError(
                    f"event {event.id!r}: time and received_at must be int milliseconds"
                )
            meter = event.meter
            add_row(
                pack((event.id, meter, value, time, mapping, event.producer, event.received_at))
            )
            digest = fresh()
            digest.update(pack((meter, text, time, properties)))  # fingerprint_of()'s bytes
            add_fingerprint(from_bytes(digest.digest(), "big") >> 1)
            add_second(time // 1000)
            pack = _PACK
    keys = schema.dedupe_row_keys(buckets, chain.from_iterable(map(itemgetter(1), groups)))
    return packed, fingerprints, keys, seconds


def _invalid(account: str, events: Sequence[Event]) -> InvalidEvents:
    """The error for the first event of ``events`` that cannot be stored."""
    bucket = schema.account_bucket(account)
    for index, event in enumerate(events):
        try:
            codec.pack_rows([codec.event_row(event)])
            schema.dedupe_row_key(bucket, event)
            event.fingerprint()
        except Exception as exc:
            failure = InvalidEvents(
                f"append for account {account!r}: event {index} (id {event.id!r})"
                f" cannot be stored: {exc}"
            )
            failure.__cause__ = exc
            return failure
    return InvalidEvents(f"append for account {account!r}: an event cannot be stored")


class Appends:
    """The append side of one group transaction: the next batch id, the batches and dedupe
    rows it added, the horizon (see the module doc)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        now: int,
        tail: JournalTail,
        buckets: dict[str, int] | None = None,
        known_accounts: set[str] | frozenset[str] = frozenset(),
        horizon: int | None = None,
        dedupe_window_ms: int | None = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.tail = tail
        # Dedupe retention (meterd.store.retention): the horizon, raised by each operation
        # before it is decided; floor_s is it in seconds (None: nothing forgotten).
        self.horizon = horizon
        self.floor_s = None if horizon is None else horizon // 1000
        self.dedupe_window_ms = dedupe_window_ms
        self.buckets = {} if buckets is None else buckets
        self.known_accounts = known_accounts
        self.new_accounts: list[str] = []
        # For the passes (journal_index.py): the batches this transaction appended, and the
        # dedupe rows of their events by slice and by key (they are not in ``dedupe`` yet).
        self.new_batches: list[NewBatch] = []
        self.new_dedupe_by_slice: dict[int, list[DedupeRow]] = {}
        self.new_dedupe: dict[int, tuple[int, int, int]] = {}
        (self.next_batch_id,) = conn.execute(
            "SELECT max("
            " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event_batches'), 0),"
            " coalesce((SELECT max(batch_id) FROM event_batches), 0)) + 1"
        ).fetchone()
        self._batch_ids: dict[int, tuple[str, frozenset[str]]] = {}

    def append_batch(self, op: BatchAppend) -> list[AppendResult] | InvalidEvents:
        """One producer batch: one key lookup for all its events, one ``executemany`` per
        table. Verdicts as if each group were an :meth:`append`, in order.

        Keys, packed rows and fingerprints are computed for the whole batch at once; when
        no key is stored yet and none repeats (the common case: every event new, no two
        sharing a key), every event is accepted without any per-event decision
        (:meth:`_all_new`); otherwise each group is classified in order.

        The dedupe horizon is raised for ``op`` first; an event older than it is
        ``too_late``, whatever the index holds (:mod:`meterd.store.retention`)."""
        encoded = op.encoded
        if encoded is None:
            encoded = encode_batch(op.groups, self.buckets)
        if isinstance(encoded, InvalidEvents):
            return encoded
        packed, fingerprints, keys, seconds = encoded
        if self.dedupe_window_ms is not None:
            self._raise_horizon(op.received_at)
        floor = self.floor_s
        stored = self._lookup_keys(keys) if keys else {}
        audit_rows: list[AuditRow] = []
        overflow_rows: list[OverflowRow] = []
        if (
            not stored
            and len(set(keys)) == len(keys)
            and (floor is None or not seconds or min(seconds) >= floor)
        ):
            results, batch_rows, dedupe_rows = self._all_new(
                op, packed, keys, fingerprints, seconds
            )
        else:
            results, batch_rows, dedupe_rows = [], [], []
            self._classify_groups(
                op, packed, keys, fingerprints, seconds, stored, results, batch_rows,
                dedupe_rows, overflow_rows, audit_rows,
            )  # fmt: skip
        conn = self.conn
        if batch_rows:
            insert_rows(
                conn,
                "INSERT INTO event_batches"
                " (batch_id, account, received_at, count, payload, min_time, max_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch_rows,
            )
            self._defer_dedupe(batch_rows, dedupe_rows)
            if overflow_rows:
                conn.executemany(
                    "INSERT INTO dedupe_overflow"
                    " (account, event_id, batch_id, fingerprint, time_s) VALUES (?, ?, ?, ?, ?)",
                    overflow_rows,
                )
            self._note_accounts(map(_account_of_row, batch_rows))
            self.new_batches.extend(map(_new_batch_of_row, batch_rows))
        if op.rejected:
            self._audit_rejected(audit_rows, op)
        if audit_rows:
            conn.executemany(
                "INSERT INTO audit (account, kind, event_id, code, message, meter, time,"
                " properties, producer, seq, batch_id, received_at, position)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                audit_rows,
            )
        return results

    def _defer_dedupe(self, batch_rows: list[BatchRow], dedupe_rows: list[DedupeRow]) -> None:
        """Hold ``dedupe_rows`` for their slices' next pass (``batch_rows``: their batches)."""
        slices = dict(
            zip(
                map(_batch_of_row, batch_rows),
                map(self.tail.slice_of, map(_account_of_row, batch_rows)),
                strict=True,
            )
        )
        by_slice = self.new_dedupe_by_slice
        for k, row in zip(
            map(slices.__getitem__, map(_batch_of_dedupe, dedupe_rows)), dedupe_rows, strict=True
        ):
            rows = by_slice.get(k)
            if rows is None:
                by_slice[k] = [row]
            else:
                rows.append(row)
        self.new_dedupe.update(
            zip(map(_key_of_dedupe, dedupe_rows), map(_held_of_dedupe, dedupe_rows), strict=True)
        )

    def _raise_horizon(self, received_at: int) -> None:
        """The horizon for an operation received at ``received_at`` (never lowered)."""
        assert self.dedupe_window_ms is not None
        wanted = retention.horizon_at(received_at, self.dedupe_window_ms)
        if self.horizon is None or wanted > self.horizon:
            self.horizon = wanted
            self.floor_s = wanted // 1000

    def _all_new(
        self,
        op: BatchAppend,
        packed: list[bytes],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
    ) -> tuple[list[AppendResult], list[BatchRow], list[DedupeRow]]:
        """Results and rows when every event of ``op`` is accepted: each group becomes a
        journal batch of all its events (``packed``, ``keys``, ``fingerprints``,
        ``seconds``: the batch's events in order)."""
        groups = op.groups
        at = op.received_at
        counts = list(map(len, map(itemgetter(1), groups)))
        first = self.next_batch_id
        self.next_batch_id = first + len(groups)
        batch_ids = range(first, first + len(groups))
        if len(counts) == len(packed):  # one event a group (events over many accounts)
            times = list(map(_time_of, map(itemgetter(0), map(itemgetter(1), groups))))
            batch_rows: list[BatchRow] = list(
                zip(
                    batch_ids,
                    map(itemgetter(0), groups),
                    repeat(at),
                    repeat(1),
                    map(_ONE.__add__, packed),
                    times,
                    times,
                    strict=False,  # repeat()s
                )
            )
            results = list(map(accepted_result, batch_ids, counts))
            dedupe_rows = list(zip(keys, batch_ids, fingerprints, seconds, strict=True))
            return results, batch_rows, dedupe_rows
        batch_rows = []
        add_batch = batch_rows.append
        start = 0
        for batch_id, (account, events), count in zip(batch_ids, groups, counts, strict=True):
            if count == 1:  # most groups, with events spread over many accounts
                time = events[0].time
                add_batch((batch_id, account, at, 1, _ONE + packed[start], time, time))
            else:
                times = [event.time for event in events]
                payload = codec.pack_batch(packed[start : start + count])
                add_batch((batch_id, account, at, count, payload, min(times), max(times)))
            start += count
        results = list(map(accepted_result, batch_ids, counts))
        event_batch_ids = chain.from_iterable(map(repeat, batch_ids, counts))
        dedupe_rows = list(zip(keys, event_batch_ids, fingerprints, seconds, strict=True))
        return results, batch_rows, dedupe_rows

    def _classify_groups(
        self,
        op: BatchAppend,
        packed: list[bytes],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
        stored: dict[int, StoredRow],
        results: list[AppendResult],
        batch_rows: list[BatchRow],
        dedupe_rows: list[DedupeRow],
        overflow_rows: list[OverflowRow],
        audit_rows: list[AuditRow],
    ) -> None:
        """Each group's verdicts in order, when some key of ``op`` is stored or repeats, or
        some event is older than the horizon: appends to the result and row lists."""
        taken: set[int] = set()  # keys claimed by earlier groups of this batch
        floor = self.floor_s
        start = 0
        for account, events in op.groups:
            count = len(events)
            stop = start + count
            group_keys = keys[start:stop]
            group_fingerprints = fingerprints[start:stop]
            group_seconds = seconds[start:stop]
            group_packed = packed[start:stop]
            start = stop
            batch_id = self.next_batch_id
            clash = bool(stored) and not stored.keys().isdisjoint(group_keys)
            clash = clash or (bool(taken) and not taken.isdisjoint(group_keys))
            clash = clash or (floor is not None and min(group_seconds) < floor)
            if (
                not clash
                and len(set(group_keys)) == count
                and len({event.id for event in events}) == count
            ):  # all new
                accepted = list(range(count))
                duplicates: list[int] = []
                conflicts: list[int] = []
                too_late: list[int] = []
                horizon = None
                dedupe_rows.extend(
                    zip(group_keys, repeat(batch_id), group_fingerprints, group_seconds)
                )
                taken.update(group_keys)
                kept = group_packed
            else:
                verdicts = self._classify(
                    account, events, group_keys, group_fingerprints, group_seconds, stored,
                    batch_id, taken,
                )  # fmt: skip
                accepted, duplicates, conflicts, too_late = verdicts[:4]
                group_dedupe, group_overflow, originals = verdicts[4:]
                if duplicates or conflicts or too_late:
                    self._audit_verdicts(
                        audit_rows, op, account, events, duplicates, conflicts, too_late,
                        originals, self.horizon,
                    )  # fmt: skip
                dedupe_rows.extend(group_dedupe)
                overflow_rows.extend(group_overflow)
                taken.update(row[0] for row in group_dedupe)
                horizon = self.horizon if too_late else None
                if not accepted:
                    results.append(
                        AppendResult(None, accepted, duplicates, conflicts, too_late, horizon)
                    )
                    continue
                kept = [group_packed[index] for index in accepted]
            self.next_batch_id += 1
            times = [events[index].time for index in accepted]
            batch_rows.append(
                (
                    batch_id,
                    account,
                    op.received_at,
                    len(accepted),
                    codec.pack_batch(kept),
                    min(times),
                    max(times),
                )
            )
            results.append(
                AppendResult(batch_id, accepted, duplicates, conflicts, too_late, horizon)
            )

    @staticmethod
    def _audit_verdicts(
        audit_rows: list[AuditRow],
        op: BatchAppend,
        account: str,
        events: Sequence[Event],
        duplicates: list[int],
        conflicts: list[int],
        too_late: list[int],
        originals: dict[str, int],
        horizon: int | None,
    ) -> None:
        """The audit rows of a group's duplicates, conflicts and events older than the
        horizon (``originals``: the batch of the counted copy of each id)."""
        at = op.received_at
        code: dict[int, str] = dict.fromkeys(conflicts, "id_conflict")
        code.update(dict.fromkeys(too_late, "time_out_of_range"))
        for index in sorted(duplicates + conflicts + too_late):
            event = events[index]
            rejection = code.get(index)
            if rejection == "time_out_of_range":
                assert horizon is not None
                message: str | None = too_late_message(event.time, horizon)
            elif rejection == "id_conflict":
                message = conflict_message(account, event.id)
            else:
                message = None
            audit_rows.append(
                (
                    account,
                    "duplicate" if rejection is None else "rejected",
                    event.id,
                    rejection,
                    message,
                    event.meter,
                    event.time,
                    _properties_json(event.properties),
                    op.producer if op.producer is not None else event.producer,
                    op.seq,
                    None if rejection == "time_out_of_range" else originals.get(event.id),
                    at,
                    event.time,
                )
            )

    @staticmethod
    def _audit_rejected(audit_rows: list[AuditRow], op: BatchAppend) -> None:
        at = op.received_at
        for r in op.rejected:
            audit_rows.append(
                (
                    r.account,
                    "rejected",
                    r.event_id,
                    r.code,
                    r.message,
                    r.meter,
                    r.time,
                    _properties_json(r.properties),
                    op.producer,
                    op.seq,
                    None,
                    at,
                    at if r.time is None else r.time,
                )
            )

    def _note_accounts(self, accounts: Iterable[str]) -> None:
        """Make sure ``accounts`` have their row (skipping those this writer knows have)."""
        missing = list(filterfalse(self.known_accounts.__contains__, accounts))
        if missing:
            insert_rows(
                self.conn,
                "INSERT INTO accounts (account, watermark, updated_at) VALUES (?, 0, ?)"
                " ON CONFLICT (account) DO NOTHING",
                list(zip(missing, repeat(self.now))),
            )
            self.new_accounts.extend(missing)

    def append(self, op: Append) -> AppendResult | InvalidEvents:
        """One account's events: a batch of one group."""
        result = self.append_batch(BatchAppend(((op.account, op.events),), op.received_at))
        return result if isinstance(result, InvalidEvents) else result[0]

    def _classify(
        self,
        account: str,
        events: Sequence[Event],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
        stored: dict[int, StoredRow],
        batch_id: int,
        taken: set[int] | frozenset[int] = frozenset(),
    ) -> tuple[
        list[int],
        list[int],
        list[int],
        list[int],
        list[DedupeRow],
        list[OverflowRow],
        dict[str, int],
    ]:
        """Verdicts (accepted, duplicates, conflicts, too late) when some key is stored
        already or repeats within the call, or some event is older than the horizon, the
        rows to write, and the journal batch of the counted copy of each id seen (for the
        audit rows).

        ``taken``: keys claimed (not yet written) by other accounts' groups of the same
        batch; an event with such a key is new but goes to the overflow table.
        """
        floor = self.floor_s
        late = (
            frozenset()
            if floor is None
            else frozenset(index for index, s in enumerate(seconds) if s < floor)
        )

        def remembered(time_s: int | None) -> bool:
            return floor is None or time_s is None or time_s >= floor

        # The fingerprint each id already has: stored and remembered (checked to really be
        # this (account, id): in the overflow table, or in the batch the key points at), or
        # accepted earlier in this call. Too late events are decided before any lookup.
        known: dict[str, int] = {}
        originals: dict[str, int] = {}
        for index, event in enumerate(events):
            row = stored.get(keys[index])
            if row is None or event.id in known or index in late:
                continue
            overflow = self._overflow_row(account, event.id)
            if overflow is not None and remembered(overflow[2]):
                known[event.id], originals[event.id] = overflow[0], overflow[1]
            elif (
                remembered(row[2])
                and self._batch_holds(row[0], account, event.id)
                # ... and not as a copy the key's row is not (an overflow row of that batch)
                and (overflow is None or not self._overflowed(account, event.id, row[0]))
            ):
                known[event.id], originals[event.id] = row[1], row[0]

        accepted: list[int] = []
        duplicates: list[int] = []
        conflicts: list[int] = []
        too_late: list[int] = []
        dedupe_rows: list[DedupeRow] = []
        overflow_rows: list[OverflowRow] = []
        claimed: set[int] = set()
        for index, event in enumerate(events):
            if index in late:
                too_late.append(index)
                continue
            fingerprint = fingerprints[index]
            previous = known.get(event.id)
            if previous is None:
                known[event.id] = fingerprint
                originals[event.id] = batch_id
                accepted.append(index)
                key = keys[index]
                row = stored.get(key)
                # The key is another (account, id)'s, or a forgotten row's that only a row
                # of the dedupe table may replace (the tail holds one row per key).
                if (
                    (row is not None and (not row[3] or remembered(row[2])))
                    or key in claimed
                    or key in taken
                ):
                    overflow_rows.append((account, event.id, batch_id, fingerprint, seconds[index]))
                else:
                    claimed.add(key)
                    dedupe_rows.append((key, batch_id, fingerprint, seconds[index]))
            elif previous == fingerprint:
                duplicates.append(index)
            else:
                conflicts.append(index)
        return (
            accepted, duplicates, conflicts, too_late, dedupe_rows, overflow_rows, originals
        )  # fmt: skip

    def _lookup_keys(self, keys: list[int]) -> dict[int, StoredRow]:
        """The row of each of ``keys`` stored, remembered or not: in this transaction, in
        the tail no pass has written yet, or in ``dedupe``."""
        found: dict[int, StoredRow] = {}
        local, held = self.new_dedupe, self.tail.stored
        pending: list[int] = []
        for key in set(keys):
            row = local.get(key) or held(key)
            if row is None:
                pending.append(key)
            else:
                found[key] = (row[0], row[1], row[2], False)
        for key, (batch_id, fingerprint, time_s) in schema.stored_dedupe_rows(
            self.conn, pending
        ).items():
            found[key] = (batch_id, fingerprint, time_s, True)
        return found

    def _overflow_row(self, account: str, event_id: str) -> tuple[int, int, int | None] | None:
        """``(fingerprint, batch_id, time_s)`` of the newest copy of ``(account, event_id)``
        in ``dedupe_overflow`` (an id counted again once forgotten has one row per copy)."""
        row = self.conn.execute(
            "SELECT fingerprint, batch_id, time_s FROM dedupe_overflow"
            " WHERE account = ? AND event_id = ? ORDER BY batch_id DESC LIMIT 1",
            (account, event_id),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), row[2])

    def _overflowed(self, account: str, event_id: str, batch_id: int) -> bool:
        """Whether ``(account, event_id)`` has a ``dedupe_overflow`` row of ``batch_id``."""
        return (
            self.conn.execute(
                "SELECT 1 FROM dedupe_overflow WHERE account = ? AND event_id = ? AND batch_id = ?",
                (account, event_id, batch_id),
            ).fetchone()
            is not None
        )

    def _batch_holds(self, batch_id: int, account: str, event_id: str) -> bool:
        """Whether journal batch ``batch_id`` holds ``(account, event_id)``."""
        entry = self._batch_ids.get(batch_id)
        if entry is None:
            row = self.conn.execute(
                "SELECT account, payload FROM event_batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                raise StoreCorruptError(
                    f"a dedupe row points at journal batch {batch_id}, which does not exist"
                )
            ids = codec.batch_event_ids(row[1], where=f"batch {batch_id}")
            entry = (row[0], frozenset(ids))
            self._batch_ids[batch_id] = entry
        return entry[0] == account and event_id in entry[1]
