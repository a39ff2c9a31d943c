"""Closed billing periods of a cluster, in a replicated JetStream KV bucket (docs/cluster.md
"Closed billing periods").

On one host a closed month is a row of the billing database. In a cluster that database is
per shard, on the disk of the node that holds the shard, and a node that takes a shard over
(kill -9 of its owner) starts from its own file: a close recorded there only would be lost.
So the fact that a month is closed — who closed it and when — is kept once for the cluster,
in the KV bucket :data:`PERIODS` (file storage, history 1, 3 replicas when the cluster has at
least 3 servers, no TTL), key ``period-YYYY-MM``, value ``{"by", "at", "node"}``.

* :meth:`ClosedPeriods.close` is a KV ``create``: the first close of a month wins, a close
  of the same month on any node afterwards (or racing it) is refused with
  :class:`AlreadyClosed`, naming who closed it, when and on which node.
* :meth:`ClosedPeriods.closed` answers whether a month is closed. A month seen closed stays
  closed (nothing reopens one), so it is cached for good; a month not seen closed yet is read
  from the stream's leader every time (not a replica's direct get, which may lag), so a
  close whose request has answered is seen by every node's next read. NATS not answering
  raises :class:`~._nats.ClusterUnavailable`.

Each shard's billing still fixes its own accounts' figures in its billing database when the
month is closed (the close request goes to every shard); a shard that finds a month closed
in the bucket but not in its database (taken over from a dead node, or down at the close)
fixes its figures when it first reads that month (:class:`meterd.billing.Billing`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

import nats.js.errors
import structlog
import trio
from nats.js.kv import KeyValue

from meterd.billing import Period

from ._lease import ensure_kv_bucket
from ._nats import ClusterUnavailable, Connection, StreamMismatch

__all__ = ["PERIODS", "AlreadyClosed", "ClosedPeriods", "SharedClosure", "period_key"]

log = structlog.get_logger("meterd.cluster.periods")

PERIODS: Final = "meterd-periods"


def period_key(period: Period) -> str:
    return f"period-{period}"


@dataclass(frozen=True, slots=True)
class SharedClosure:
    """A month closed for the whole cluster: by whom, when (ms), through which node."""

    period: Period
    by: str
    at: int
    node: str


class AlreadyClosed(Exception):
    """The month was closed before (or by a close that raced this one and won)."""

    def __init__(self, closure: SharedClosure) -> None:
        super().__init__(
            f"period {closure.period} is already closed (by {closure.by!r} at {closure.at}"
            f" through node {closure.node!r})"
        )
        self.closure = closure


def _decode(period: Period, value: bytes) -> SharedClosure:
    doc = json.loads(value)
    return SharedClosure(period, str(doc["by"]), int(doc["at"]), str(doc["node"]))


class ClosedPeriods:
    """The cluster's closed months (see the module doc). Open with :meth:`open`."""

    def __init__(self, connection: Connection, kv: KeyValue, stream: str) -> None:
        self.connection = connection
        self._kv = kv
        self._stream = stream
        self._seen: dict[Period, SharedClosure] = {}

    @classmethod
    async def open(cls, connection: Connection, *, timeout: float = 10.0) -> ClosedPeriods:
        """The bucket, made if missing (R3 with at least 3 known servers, else R1); one made
        with a TTL is refused (:class:`StreamMismatch`): a closed month must not expire."""
        replicas = 3 if connection.known_servers >= 3 else 1
        kv, ttl = await ensure_kv_bucket(
            connection, PERIODS, replicas=replicas, timeout=timeout
        )
        if ttl:
            raise StreamMismatch(
                f"bucket {PERIODS!r} exists with a ttl of {ttl} s: closed billing periods must"
                f" not expire; delete the bucket (nats kv del {PERIODS}) and close the months"
                " again"
            )
        return cls(connection, kv, f"KV_{PERIODS}")

    async def close(self, period: Period, *, by: str, at: int, node: str) -> SharedClosure:
        """Record ``period`` as closed (KV create: the first close wins); :class:`AlreadyClosed`
        when it was closed before."""
        closure = SharedClosure(period, by, at, node)
        value = json.dumps({"by": by, "at": at, "node": node}).encode()
        kv, key = self._kv, period_key(period)

        async def create() -> int:
            return await kv.create(key, value)

        try:
            revision = await self.connection._run(f"close {key} in {PERIODS}", create)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # KeyNotFoundError: nats-py's create, refused (the key exists), looks the key up
            # with a direct get that a lagging replica answers "not found"
            raise AlreadyClosed(await self._winner(period)) from None
        self._seen[period] = closure
        log.info(
            "cluster.period.closed", period=str(period), by=by, at=at, node=node, revision=revision
        )
        return closure

    async def _winner(self, period: Period) -> SharedClosure:
        """The closure that made ours refused: a racing create refused while the winner's
        write is still being replicated is not readable yet, even at the leader (read again
        every 50 ms, for up to the connection's publish timeout)."""
        with trio.move_on_after(self.connection.publish_timeout):
            while True:
                existing = await self.closed(period)
                if existing is not None:
                    return existing
                await trio.sleep(0.05)
        raise ClusterUnavailable(
            f"{period_key(period)} in {PERIODS}: the close was refused (the month is closed)"
            " but who closed it could not be read; retry"
        )

    async def closed(self, period: Period) -> SharedClosure | None:
        """The month's closure if it is closed (see the module doc for how fresh)."""
        seen = self._seen.get(period)
        if seen is not None:
            return seen
        js, stream, subject = self.connection._jetstream, self._stream, f"$KV.{PERIODS}."
        subject += period_key(period)

        async def read() -> bytes | None:
            try:  # from the stream's leader: a replica's direct get may not have it yet
                message = await js.get_msg(stream, subject=subject, direct=False)
            except nats.js.errors.NotFoundError:
                return None
            return message.data

        value = await self.connection._run(f"read {period_key(period)} in {PERIODS}", read)
        if not value:
            return None
        closure = _decode(period, value)
        self._seen[period] = closure
        return closure
