"""Figures of a process read from ``/proc`` (Linux), shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_bytes"]


def write_bytes(pid: int) -> int | None:
    """Bytes process ``pid`` (all its threads) has caused to be written to storage so far
    (``write_bytes`` of ``/proc/<pid>/io``: file data as it is dirtied, so the SQLite WAL,
    the database file when SQLite copies the WAL back into it, and the logs)."""
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    for line in io.splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return None
