"""``Store``: the writer and the reader of one database, as the other layers hold them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import supervisors as sv
from meterd.config import StoreConfig

from ._rounds import CommitRounds
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
        config: StoreConfig,
        *,
        audit_retention_ms: int | None = None,
        dedupe_window_ms: int | None = None,
        meter_dimensions: MeterDimensions | None = None,
        rounds: CommitRounds | None = None,
    ) -> Store:
        """The store at ``path`` with the ``[store]`` table ``config`` (see :class:`Writer`;
        ``rounds``: the commit loop it shares with the other files of its process)."""
        writer = Writer(
            path,
            config,
            audit_retention_ms=audit_retention_ms,
            dedupe_window_ms=dedupe_window_ms,
            meter_dimensions=meter_dimensions,
            rounds=rounds,
        )
        # The reader takes the tail of the journal index from the writer's memory.
        return cls(writer, Reader(path, tail=writer.journal_tail.entries))

    def writer_spec(self, id: str = "store-writer") -> sv.ChildSpec:
        """The writer as a supervised task child (``run`` reports ready once migrated)."""
        return sv.task_spec(id, self.writer.run)

    async def aclose(self) -> None:
        """Close the reader's connections (the writer closes its own when it stops)."""
        await self.reader.aclose()
