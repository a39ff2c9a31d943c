"""``meterd migrate partitions`` that kills itself with SIGKILL: at a step (``--step``), or
after a random delay from another thread (``--after SECONDS``: SQLite releases the GIL, so
it may land in the middle of a statement). A kill -9 at a chosen or random moment."""

from __future__ import annotations

import argparse
import os
import signal
import threading
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
    migrate(config, fail=fail)
    os._exit(0)  # before the timer fires: the migration finished


if __name__ == "__main__":
    main()
