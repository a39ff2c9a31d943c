"""Real NATS servers for the cluster tests (the servers themselves: meterd.cluster._dev), and
waiting helpers."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from meterd.cluster._dev import (
    META_LEADER,
    READY,
    NatsCluster,
    NatsServer,
    free_port,
    make_cluster,
    nats_server_binary,
    running_cluster,
    serve_dev,
)

__all__ = [
    "META_LEADER",
    "READY",
    "NatsCluster",
    "NatsServer",
    "free_port",
    "make_cluster",
    "nats_server_binary",
    "paused",
    "running_cluster",
    "until",
]


async def until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds (looked at every 20 ms: the state it reads is changed by
    other threads or processes, which cannot wake a Trio task); fail after ``timeout`` s."""
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        if predicate():
            return
        await trio.sleep(0.02)  # look again soon
    if not predicate():
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def paused(server: NatsServer) -> Iterator[None]:
    """SIGSTOP the server (it accepts nothing, answers nothing) until the block ends.

    The block starts only once every thread of the server shows as stopped in ``/proc``:
    ``kill`` returns when the signal is queued, and a CI run once saw the server answer three
    publishes sent after it (on a loaded 2-core VM)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    _wait_stopped(server.process.pid)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once every thread of process ``pid`` is in the stopped state (``T``)."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                stat = (task / "stat").read_text()
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            states.append(stat[stat.rindex(")") + 2])
        if states and all(state in "Tt" for state in states):
            return
        time.sleep(0.001)  # another process's state: nothing here can wake us
    raise AssertionError(f"process {pid} did not stop within {timeout} s of SIGSTOP")


def main() -> None:
    """``python -m tests.cluster.servers [1|3] [DIR]``: a local cluster for development, until
    Ctrl-C (stores in DIR, default a temporary directory); ``meterd cluster dev`` does the same."""
    import tempfile

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        serve_dev(size, Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp))


if __name__ == "__main__":
    main()
