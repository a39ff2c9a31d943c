"""``meterd migrate partitions`` that kills itself with SIGKILL: at a step (``--step``), or
after a random delay from another thread (``--after SECONDS``: SQLite releases the GIL, so
it may land in the middle of a statement). A kill -9 at a chosen or random moment. A run
that finishes prints how many seconds the migration took."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

from meterd.config import load
from meterd.partitions._migrate import migrate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--step")
    parser.add_argument("--after", type=float)
    args = parser.parse_args()
    config = load(args.config)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def fail(step: str) -> None:
        if step == args.step:
            die()

    if args.after is not None:
        threading.Timer(args.after, die).start()
    started = time.monotonic()
    migrate(config, fail=fail)
    print(f"{time.monotonic() - started:.3f}", flush=True)  # how long it took, uninterrupted
    os._exit(0)  # before the timer fires: the migration finished


if __name__ == "__main__":
    main()
