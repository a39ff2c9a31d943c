"""Leases in a JetStream KV bucket with a TTL: one holder per key at a time.

* :meth:`Leases.acquire` writes the key only if it does not exist (``create``): refused with
  :class:`LeaseHeld` while another holder's entry lives.
* :meth:`Leases.renew` rewrites it only if its revision is still the holder's (``update`` with
  ``last=revision``, a compare-and-set): :class:`LeaseLost` once someone else wrote it or it
  expired. Each write restarts the entry's age.
* The bucket's TTL removes an entry ``ttl`` seconds after its last write: then another holder's
  ``acquire`` succeeds. The revision (the KV stream's sequence) increases with every write, so it
  serves as an epoch / fencing token.

A holder must treat its lease as gone at ``lease.valid_until`` (its own clock, counted from
before the write was sent) unless a renewal succeeded first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.js.errors
import structlog
import trio
from nats.js import api
from nats.js.kv import KeyValue

from meterd.cluster._nats import ClusterUnavailable, StreamMismatch

if TYPE_CHECKING:
    from meterd.cluster._nats import Connection

log = structlog.get_logger("meterd.cluster.lease")


#: JetStream's "wrong last sequence" errors: a compare-and-set whose revision did not match.
_WRONG_LAST_SEQUENCE = (10071, 10164)


class LeaseHeld(Exception):
    """The key is held by a live lease (another holder's, or an earlier one of this holder)."""

    def __init__(self, message: str, *, key: str, holder: str | None, revision: int | None) -> None:
        super().__init__(message)
        self.key = key
        self.holder = holder
        self.revision = revision


class LeaseLost(Exception):
    """The lease expired or another holder wrote the key: the holder must stop acting on it."""


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    holder: str
    revision: int  # the KV revision of the holder's last write
    valid_until: float  # trio.current_time() at which the holder must consider it gone
    epoch: int = 0  # the revision that started this tenure (acquire / take over): fencing
    written_at: float = 0.0  # time.monotonic() before the last write was sent

    @property
    def fence_epoch(self) -> int:
        return self.epoch or self.revision


def _value(holder: str, epoch: int) -> bytes:
    """A lease entry's value: the holder, and from the first renewal on ``@epoch``."""
    return f"{holder}@{epoch}".encode() if epoch else holder.encode()


def parse_value(value: bytes, revision: int) -> tuple[str, int]:
    """(holder, epoch) of a lease entry written at ``revision``."""
    text = value.decode(errors="replace")
    holder, at, epoch = text.rpartition("@")
    if at and epoch.isdigit():
        return holder, int(epoch)
    return text, revision


class Leases:
    """Leases of ``ttl`` seconds on keys of one KV bucket. Open with ``Connection.leases``."""

    def __init__(self, connection: Connection, bucket: str, ttl: float, kv: KeyValue) -> None:
        self.connection = connection
        self.bucket = bucket
        self.ttl = ttl
        self._kv = kv

    @classmethod
    async def open(
        cls,
        connection: Connection,
        bucket: str,
        *,
        ttl: float,
        replicas: int | None = None,
        timeout: float = 10.0,
    ) -> Leases:
        if ttl <= 0:
            raise ValueError(f"lease bucket {bucket!r}: ttl must be > 0 seconds, got {ttl}")
        if replicas is None:
            replicas = 3 if connection.known_servers >= 3 else 1
        kv = await open_ttl_bucket(
            connection, bucket, ttl=ttl, replicas=replicas, timeout=timeout, what="lease ttl"
        )
        return cls(connection, bucket, ttl, kv)

    async def acquire(self, key: str, holder: str) -> Lease:
        """Take the lease on ``key`` for ``holder``; LeaseHeld while a live entry exists."""
        kv = self._kv
        value = holder.encode()
        started = trio.current_time()
        written = time.monotonic()

        async def create() -> int:
            return await kv.create(key, value)

        try:
            revision = await self.connection._run(f"acquire lease {self.bucket}/{key}", create)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # KeyNotFoundError: nats-py's create, once refused (the key exists), reads the
            # key back to tell a deleted one, and a lagging replica can answer "not found":
            # refused all the same
            current = await self.holder(key)
            who, rev = current if current is not None else (None, None)
            raise LeaseHeld(
                f"lease {self.bucket}/{key} is held by {who!r} (revision {rev}); "
                f"it frees at most {self.ttl} s after that holder's last renewal",
                key=key,
                holder=who,
                revision=rev,
            ) from None
        log.info(
            "cluster.lease.acquired", bucket=self.bucket, key=key, holder=holder, revision=revision
        )
        return Lease(key, holder, revision, started + self.ttl, revision, written)

    async def take_over(self, key: str, holder: str, revision: int) -> Lease:
        """Take the live lease on ``key`` at ``revision`` for ``holder`` (compare-and-set:
        LeaseHeld if it was written since). For a node restarting under its own name, whose
        previous process held the lease and died: nobody else may hold it meanwhile."""
        kv = self._kv
        value = holder.encode()
        started = trio.current_time()
        written = time.monotonic()

        async def update() -> int:
            return await kv.update(key, value, last=revision)

        try:
            new = await self.connection._run(f"take over lease {self.bucket}/{key}", update)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise LeaseHeld(
                f"lease {self.bucket}/{key} changed since revision {revision}; not taken over",
                key=key,
                holder=None,
                revision=None,
            ) from None
        log.info(
            "cluster.lease.taken_over", bucket=self.bucket, key=key, holder=holder, revision=new
        )
        return Lease(key, holder, new, started + self.ttl, new, written)

    async def renew(self, lease: Lease) -> Lease:
        """Rewrite the entry if it is still ``lease``'s revision; LeaseLost otherwise."""
        kv = self._kv
        epoch = lease.fence_epoch
        value = _value(lease.holder, epoch)
        started = trio.current_time()
        written = time.monotonic()

        async def update() -> int:
            return await kv.update(lease.key, value, last=lease.revision)

        try:
            revision = await self.connection._run(f"renew lease {self.bucket}/{lease.key}", update)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning(
                "cluster.lease.lost",
                bucket=self.bucket,
                key=lease.key,
                holder=lease.holder,
                revision=lease.revision,
            )
            raise LeaseLost(
                f"lease {self.bucket}/{lease.key} of {lease.holder!r} (revision {lease.revision}) "
                "expired or was taken over; stop acting on it and acquire it again"
            ) from None
        return Lease(lease.key, lease.holder, revision, started + self.ttl, epoch, written)

    async def release(self, lease: Lease) -> None:
        """Delete the entry if it is still ``lease``'s; LeaseLost if it no longer is."""
        kv = self._kv

        async def delete() -> bool:
            return await kv.delete(lease.key, last=lease.revision)

        try:
            await self.connection._run(f"release lease {self.bucket}/{lease.key}", delete)
        except nats.js.errors.BadRequestError as error:
            # kv.delete reports a revision mismatch as a plain bad request (10071 / 10164)
            if error.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            raise LeaseLost(
                f"lease {self.bucket}/{lease.key} of {lease.holder!r} (revision {lease.revision}) "
                "was no longer held when released"
            ) from None
        log.info("cluster.lease.released", bucket=self.bucket, key=lease.key, holder=lease.holder)

    async def holder(self, key: str) -> tuple[str, int] | None:
        """(holder, revision) of the live entry on ``key``, or None."""
        found = await self.entry(key)
        return None if found is None else (found[0], found[2])

    async def entry(self, key: str) -> tuple[str, int, int] | None:
        """(holder, epoch, revision) of the live entry on ``key``, or None."""
        kv = self._kv

        async def get() -> tuple[str, int, int] | None:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            revision = entry.revision or 0
            return (*parse_value(entry.value or b"", revision), revision)

        return await self.connection._run(f"read lease {self.bucket}/{key}", get)

    async def entries(self, keys: Iterable[str]) -> dict[str, tuple[str, int, int]]:
        """The live entries among ``keys``: key -> (holder, epoch, revision). (Not
        ``kv.keys()``: nats-py's watcher-based listing came back empty under load here.)"""
        kv = self._kv
        wanted = list(keys)

        async def read() -> dict[str, tuple[str, int, int]]:
            found: dict[str, tuple[str, int, int]] = {}
            for key in wanted:
                try:
                    entry = await kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    continue
                revision = entry.revision or 0
                found[key] = (*parse_value(entry.value or b"", revision), revision)
            return found

        return await self.connection._run(f"read leases {self.bucket}", read)


__all__ = ["ClusterUnavailable", "Lease", "LeaseHeld", "LeaseLost", "Leases"]


async def ensure_kv_bucket(
    connection: Connection,
    bucket: str,
    *,
    replicas: int,
    timeout: float,
    ttl: float | None = None,
) -> tuple[KeyValue, float | None]:
    """The KV ``bucket`` (file storage, history 1, ``replicas``; entries expiring after
    ``ttl`` seconds, or never), made if missing, and the ttl it exists with: the caller
    refuses one that is not what it needs."""
    js = connection._jetstream

    async def ensure() -> tuple[KeyValue, float | None]:
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    ttl=ttl,
                    replicas=replicas,
                    storage=api.StorageType.FILE,
                )
            )
        status = await kv.status()
        return kv, status.ttl

    return await connection._retry_placement(
        f"open bucket {bucket} (R{replicas})", ensure, timeout
    )


async def open_ttl_bucket(
    connection: Connection,
    bucket: str,
    *,
    ttl: float,
    replicas: int,
    timeout: float,
    what: str,
) -> KeyValue:
    """The KV ``bucket`` whose entries expire after ``ttl`` seconds, made if missing (file
    storage, history 1, ``replicas``). A bucket made with another ttl is refused with
    :class:`StreamMismatch`: every node must use the same ``what`` (a config key)."""
    kv, existing = await ensure_kv_bucket(
        connection, bucket, replicas=replicas, timeout=timeout, ttl=ttl
    )
    if existing is None or abs(existing - ttl) > 1e-3:
        raise StreamMismatch(
            f"bucket {bucket!r} exists with ttl {existing} s, not {ttl} s (the {what}):"
            f" every node must use the same {what}; delete the bucket"
            f" (nats kv del {bucket}) or fix the setting"
        )
    return kv
