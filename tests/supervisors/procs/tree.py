"""A supervisor in a process of its own, for the no-orphans test: ``tree.py``.

It runs a :class:`supervisors.Supervisor` of two process children (one ignores SIGTERM,
neither reads its stdin), prints ``pids <a> <b>`` once both are ready, and waits. The test
kills it with SIGKILL and checks that both children end too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import structlog
import trio

import supervisors as sv

CHILD = str(Path(__file__).with_name("child.py"))


async def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    quiet = subprocess.DEVNULL
    sup = sv.Supervisor(
        [
            sv.process_spec("a", [sys.executable, CHILD, "ready"], stdout=quiet),
            sv.process_spec("b", [sys.executable, CHILD, "ignore-term"], stdout=quiet),
        ],
        name="tree",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        pids = [info.ref.pid for info in sup.which_children()]
        sys.stdout.write("pids " + " ".join(map(str, pids)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    trio.run(main)
