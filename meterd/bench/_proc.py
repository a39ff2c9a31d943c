"""Figures of a process read from ``/proc`` (Linux), shared by the benchmarks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "ProcessFigures",
    "TreeMeter",
    "children",
    "command_line",
    "cpu_seconds",
    "main_thread_cpu_seconds",
    "switches",
    "system_cpu_seconds",
    "process_name",
    "rss_bytes",
    "tree",
    "tree_cpu_seconds",
    "write_bytes",
]


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


def main_thread_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid``'s main thread alone (the Trio thread of a
    meterd process; the rest is its worker threads': SQLite, fsyncs)."""
    return cpu_seconds_of(f"/proc/{pid}/task/{pid}/stat")


def cpu_seconds_of(stat_path: str) -> float | None:
    try:
        stat = Path(stat_path).read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def system_cpu_seconds(pid: int) -> float | None:
    """System (kernel) CPU of process ``pid`` (all its threads) so far: its syscalls, such
    as fsyncs, futex waits and wake-ups of its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[12]) / _TICK


def switches(pid: int) -> int | None:
    """Context switches (voluntary and not) of every thread of process ``pid`` alive now (a
    thread that ended takes its count with it: read deltas over threads that stay)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        for key in ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"):
            total += _field(pid, f"task/{task}/status", key) or 0
    return total


def rss_bytes(pid: int) -> int | None:
    kib = _field(pid, "status", "VmRSS:")
    return None if kib is None else kib * 1024


# ---- a process tree ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of all its threads: ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (parents before their children), as they are right now."""
    pids, seen = [pid], {pid}
    for parent in pids:  # grows while it is walked: breadth first
        for child in children(parent):
            if child not in seen:
                seen.add(child)
                pids.append(child)
    return pids


def command_line(pid: int) -> list[str] | None:
    """The arguments process ``pid`` was started with, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_name(arguments: Sequence[str]) -> str:
    """A short name for a process from its command line: ``gateway`` for ``meterd run``
    (the daemon's main process, with or without owners), ``owner-N`` for ``python -m
    meterd.partitions.owner --owner N``, the module for other ``python -m M``, the script
    for ``python S``, otherwise the executable's file name."""
    args = list(arguments)
    if not args:
        return "?"
    if "-m" in args[:-1]:
        module = args[args.index("-m") + 1]
        rest = args[args.index("-m") + 2 :]
        if module == "meterd" and rest[:1] == ["run"]:
            return "gateway"
        if module == "meterd.partitions.owner":
            for flag, value in itertools.pairwise(rest):
                if flag == "--owner":
                    return f"owner-{value}"
            return "owner"
        if module == "meterd.bench.ingest" and rest[:1] == ["baseline-server"]:
            return "baseline-server"
        return module
    executable = os.path.basename(args[0])
    if executable.startswith("python") and len(args) > 1 and not args[1].startswith("-"):
        return os.path.basename(args[1])
    return executable


@dataclass(slots=True)
class ProcessFigures:
    """One process of a tree over a span (or several, one after the other, under the same
    name: an owner restarted mid-span)."""

    name: str
    pids: list[int]
    cpu_seconds: float = 0.0
    write_bytes: int | None = None
    rss_peak: int | None = None
    rss_end: int | None = None  # None: not running at the end of the span


@dataclass(slots=True)
class _Seen:
    name: str
    cpu_start: float
    written_start: int | None
    cpu: float  # the last reading
    written: int | None
    rss: int | None = None  # peak
    rss_now: int | None = None
    alive: bool = True


class TreeMeter:
    """CPU, storage writes and RSS of process ``root`` and all its descendants over a span.

    The tree is re-read at every :meth:`sample` (call it often: the RSS sampler does, every
    100 ms), so a child that starts during the span (an owner restarted by its supervisor) is
    counted from zero, and one that ends keeps what it used up to the last sample before it
    ended (the part after that sample is lost: at most one sampling interval). Processes are
    named from their command line (:func:`process_name`) and summed by name."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._seen: dict[int, _Seen] = {}
        self._rss_total_peak: int | None = None
        self._first = True
        self.sample()
        self._first = False

    def sample(self) -> None:
        pids = tree(self.root)
        alive = set(pids)
        rss_total: int | None = None
        for pid in pids:
            cpu, written, rss = cpu_seconds(pid), write_bytes(pid), rss_bytes(pid)
            seen = self._seen.get(pid)
            if seen is None:
                if cpu is None:
                    continue  # gone already
                name = process_name(command_line(pid) or [])
                # There at the start: counted from now; born during the span: from zero.
                start_cpu, start_written = (cpu, written) if self._first else (0.0, 0)
                seen = self._seen[pid] = _Seen(name, start_cpu, start_written, cpu, written)
            if cpu is None:
                seen.alive = False
                continue
            seen.cpu, seen.written, seen.alive, seen.rss_now = cpu, written, True, rss
            if rss is not None:
                seen.rss = max(rss, seen.rss or 0)
                rss_total = (rss_total or 0) + rss
        for pid, seen in self._seen.items():
            if pid not in alive:
                seen.alive = False
        if rss_total is not None:
            self._rss_total_peak = max(rss_total, self._rss_total_peak or 0)

    def processes(self) -> list[ProcessFigures]:
        """Per name, in the order first seen (the root first), as of the last sample."""
        named: dict[str, ProcessFigures] = {}
        for pid, seen in self._seen.items():
            figures = named.setdefault(seen.name, ProcessFigures(seen.name, []))
            figures.pids.append(pid)
            figures.cpu_seconds += max(seen.cpu - seen.cpu_start, 0.0)
            if seen.written is not None and seen.written_start is not None:
                figures.write_bytes = (figures.write_bytes or 0) + max(
                    seen.written - seen.written_start, 0
                )
            if seen.rss is not None:
                figures.rss_peak = max(seen.rss, figures.rss_peak or 0)
            if seen.alive and seen.rss_now is not None:
                figures.rss_end = (figures.rss_end or 0) + seen.rss_now
        return list(named.values())

    @property
    def rss_total_peak(self) -> int | None:
        """The largest sum of the tree's RSS at one sample."""
        return self._rss_total_peak


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU so far of ``pid`` and its descendants now alive (None: pid gone)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in tree(pid)[1:])
