"""The daemon: one root supervisor over every part of meterd.

The tree (it grows with each role): ``root`` (one_for_one). Ingest, accounts,
store and API join it as their issues land.
"""

from __future__ import annotations

import signal

import structlog
import trio

import supervisors as sv
from meterd import __version__
from meterd.config import Config

log = structlog.get_logger("meterd")


def build_root(config: Config) -> sv.Supervisor:
    """The root supervisor for ``config``."""
    return sv.Supervisor([], strategy=sv.Strategy.ONE_FOR_ONE, name="root")


async def serve(config: Config) -> None:
    """Run the daemon until SIGINT or SIGTERM, then shut the tree down in order."""
    root = build_root(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            log.info("meterd_started", version=__version__, config=str(config.path))
            log.info("no listeners yet", ingest=str(config.ingest_listen))
            async for signum in signals:
                log.info("meterd_stopping", signal=signal.Signals(signum).name)
                root.stop()
                break
    log.info("meterd_stopped")
