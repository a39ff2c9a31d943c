"""Figures of a process read from ``/proc`` (Linux), shared by the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["cpu_seconds", "rss_bytes", "write_bytes"]


def write_bytes(pid: int) -> int | None:
    """Bytes process ``pid`` (all its threads) has caused to be written to storage so far
    (``write_bytes`` of ``/proc/<pid>/io``: file data as it is dirtied, so the SQLite WAL,
    the database file when SQLite copies the WAL back into it, and the logs)."""
    return _field(pid, "io", "write_bytes:")


def _field(pid: int, name: str, key: str) -> int | None:
    """The first number on the line of ``/proc/<pid>/<name>`` that starts with ``key``."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


_TICK: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int | None:
    kib = _field(pid, "status", "VmRSS:")
    return None if kib is None else kib * 1024
