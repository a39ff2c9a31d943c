"""The restart history of the supervision tree, kept in the store across daemon restarts.

Every supervisor of the daemon's tree tells :meth:`RestartLog.record` of each restart it
records (:attr:`supervisors.SupervisorCore.on_restart`: a crash, a kill, an operator's
restart, a sibling's restart), with the node's path (``root/accounts/meters/acme``). The
record is queued in memory (the call runs in the supervisor's control loop: it must not
block) and :meth:`RestartLog.run` writes what is queued, one transaction per wake-up, into
the ``restarts`` table (schema version 8) on its **own** connection: the store writer is
not involved, and a restart costs one small transaction, not a commit of the writer's group.

At most :data:`KEEP_PER_PATH` records are kept per path (older ones are deleted as newer
ones are written), so an account that crash-loops does not grow the table without bound.
A write that fails (a full disk) is logged once per failure run and the records are kept
queued (at most :data:`MAX_QUEUED`, the oldest dropped beyond) to be tried again.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from pathlib import Path
from typing import Final, NamedTuple
from urllib.parse import quote

import structlog
import trio

import supervisors as sv

from .schema import BUSY_TIMEOUT_MS

log = structlog.get_logger("meterd.store")

KEEP_PER_PATH: Final = 100
MAX_QUEUED: Final = 10_000
MAX_MESSAGE: Final = 1000  # characters of an error message kept
RETRY_AFTER: Final = 1.0  # seconds between attempts while writes fail


class StoredRestart(NamedTuple):
    path: str
    at: int  # Unix ms
    kind: str
    error_type: str | None
    message: str


class RestartLog:
    """See the module doc. ``store_path`` is the store's database (migrated by the writer
    before anything here touches it)."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self._queue: deque[StoredRestart] = deque(maxlen=MAX_QUEUED)
        self._queued = trio.Event()
        self._connection: sqlite3.Connection | None = None
        self._lock = trio.Lock()  # one thread on the connection at a time
        self.written = 0
        self.failing: str | None = None

    def record(self, path: str, record: sv.RestartRecord) -> None:
        """Queue one restart record (an :data:`supervisors.RestartObserver`)."""
        self._queue.append(
            StoredRestart(
                path,
                int(record.at * 1000),
                record.kind,
                record.error_type,
                record.message[:MAX_MESSAGE],
            )
        )
        self._queued.set()

    async def run(self) -> None:
        """Write what is queued until cancelled; what is queued when cancelled is written
        (shielded) before returning."""
        try:
            while True:
                await self._queued.wait()
                self._queued = trio.Event()
                if not await self.flush():
                    await trio.sleep(RETRY_AFTER)
                    self._queued.set()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await self.flush()
                await self.aclose()

    async def flush(self) -> bool:
        """Write what is queued now; whether it was written (or there was nothing)."""
        if not self._queue:
            return True
        batch = list(self._queue)
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self._write, batch)
            except sqlite3.Error as error:
                if self.failing is None:
                    log.warning(
                        "restart_history_write_failed",
                        path=str(self.store_path),
                        queued=len(batch),
                        error=str(error),
                        hint="the records stay queued and are written once the store can be"
                        " written again (a full disk: free space)",
                    )
                self.failing = str(error)
                return False
        for _ in batch:
            self._queue.popleft()
        self.written += len(batch)
        self.failing = None
        return True

    async def history(self, path: str, limit: int = 50) -> list[StoredRestart]:
        """The newest ``limit`` records of the node at ``path``, oldest first."""
        async with self._lock:
            rows = await trio.to_thread.run_sync(self._read, path, limit)
        return [StoredRestart(*row) for row in reversed(rows)]

    async def aclose(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    # ---- on a worker thread ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is None:
            uri = f"file:{quote(str(self.store_path))}?mode=rw"
            connection = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._connection = connection
        return connection

    def _write(self, batch: list[StoredRestart]) -> None:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT INTO restarts (path, at, kind, error_type, message) VALUES (?, ?, ?, ?, ?)",
                batch,
            )
            for path in {record.path for record in batch}:
                connection.execute(
                    "DELETE FROM restarts WHERE path = ? AND restart_id <= (SELECT restart_id"
                    " FROM restarts WHERE path = ? ORDER BY restart_id DESC LIMIT 1 OFFSET ?)",
                    (path, path, KEEP_PER_PATH),
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _read(self, path: str, limit: int) -> list[tuple[str, int, str, str | None, str]]:
        rows = (
            self._connect()
            .execute(
                "SELECT path, at, kind, error_type, message FROM restarts WHERE path = ?"
                " ORDER BY restart_id DESC LIMIT ?",
                (path, limit),
            )
            .fetchall()
        )
        return rows


__all__ = ["KEEP_PER_PATH", "RestartLog", "StoredRestart"]
