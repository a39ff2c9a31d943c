"""``Store``: the writer and the reader of one database, as the other layers hold them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import supervisors as sv

from ._writer import Writer
from .reader import Reader
from .schema import MeterDimensions

__all__ = ["Store"]


@dataclass(frozen=True, slots=True)
class Store:
    """One store file: its :class:`Writer` (to run as a supervised task) and a :class:`Reader`.

    The reader opens its connections on first use, so it can be built before the writer has
    created and migrated the file; query it only once the writer has started.
    """

    writer: Writer
    reader: Reader

    @classmethod
    def at(
        cls,
        path: Path | str,
        *,
        commit_interval: float = 0.002,
        max_pending: int = 10_000,
        read_connections: int = 2,
        audit_retention_ms: int | None = None,
        dedupe_window_ms: int | None = None,
        index_cycle: float = 5.0,
        wal_checkpoint_interval: float | None = 0.1,
        meter_dimensions: MeterDimensions | None = None,
    ) -> Store:
        writer = Writer(
            path,
            commit_interval=commit_interval,
            max_pending=max_pending,
            audit_retention_ms=audit_retention_ms,
            dedupe_window_ms=dedupe_window_ms,
            index_cycle=index_cycle,
            wal_checkpoint_interval=wal_checkpoint_interval,
            meter_dimensions=meter_dimensions,
        )
        # The reader takes the tail of the journal index from the writer's memory.
        return cls(
            writer, Reader(path, connections=read_connections, tail=writer.journal_tail.entries)
        )

    def writer_spec(self, id: str = "store-writer") -> sv.ChildSpec:
        """The writer as a supervised task child (``run`` reports ready once migrated)."""
        return sv.task_spec(id, self.writer.run)

    async def aclose(self) -> None:
        """Close the reader's connections (the writer closes its own when it stops)."""
        await self.reader.aclose()
