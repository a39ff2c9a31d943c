"""``python -m meterd.partitions.owner --config PATH --owner K --socket PATH``: one owner process.

Runs owner ``K``'s cells (:class:`meterd.partitions._owner.Owner`) and serves the gateway
on a Unix socket at ``--socket``. Started by the gateway as a supervised OS process
(``supervisors.process_spec``): once its tree runs and the socket listens it says it is
ready (``supervisors.notify_ready``, the socket's path as the ready line). SIGTERM or
SIGINT stop it in order (new slices answered ``unavailable``, the cells checkpoint, the
queued commits' verdicts sent) and it exits 0.

Exit status 2 for a wrong config, owner number or socket path (over 107 bytes), 1 when it
cannot start or its tree gives up (one sentence on stderr and in the log). Every log line
carries ``owner=K``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
import trio

import supervisors as sv
from meterd import logs, memory
from meterd.config import Config, ConfigError, load
from meterd.startup import describe, describe_stop

from ._owner import Owner

log = structlog.get_logger("meterd.partitions.owner")

MAX_SOCKET_PATH = 107
"""Bytes of a Unix socket's path (``sun_path`` is 108 bytes with its terminating NUL)."""


class OwnerFailed(Exception):
    """The owner could not start, or its tree gave up: one sentence."""


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m meterd.partitions.owner",
        description="A partition owner process: the cells of its shards, served to the gateway.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the daemon's config file")
    parser.add_argument("--owner", type=int, required=True, help="the owner's number, from 0")
    parser.add_argument("--socket", required=True, help="the Unix socket to serve at")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument(
        "--json-logs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON lines (default unless stderr is a TTY)",
    )
    return parser.parse_args(argv)


async def serve(config: Config, number: int, socket: str) -> None:
    """Run owner ``number`` until SIGTERM/SIGINT (see the module doc)."""
    structlog.contextvars.bind_contextvars(owner=number)
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    owner = Owner(config, number)
    try:
        await owner.open()
    except Exception as error:
        await owner.aclose()
        raise OwnerFailed(describe(error, config)) from None
    memory.tune()
    # The collector's pauses, exported by every cell (the gateway's /metrics counts a
    # process's meterd_gc_* once): what the single process exports.
    pauses = memory.GcPauses(_observe_gc_pause(owner))
    pauses.install()
    failed_start: str | None = None
    failed_run: str | None = None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, owner)
                try:
                    await nursery.start(owner.run, socket)
                except Exception as error:
                    failed_start = describe(error, config)
                else:
                    sv.notify_ready(socket)
                    async for signum in signals:
                        log.info("owner_signal", signal=signal.Signals(signum).name)
                        owner.stop()
                        break
                    await owner.finished.wait()
                nursery.cancel_scope.cancel()
    except Exception as error:  # the tree gave up after the start
        failed_run = describe_stop(error, config)
    finally:
        pauses.remove()
        await owner.aclose()
    if failed_start is not None:
        raise OwnerFailed(f"owner {number} cannot start: {failed_start}")
    if failed_run is not None:
        raise OwnerFailed(f"owner {number} stopped: {failed_run}")


def _observe_gc_pause(owner: Owner) -> Callable[[int, float], None]:
    metrics = [cell.metrics for cell in owner.cells.values()]

    def observe(generation: int, seconds: float) -> None:
        for each in metrics:
            each.observe_gc_pause(generation, seconds)

    return observe


async def _collect(owner: Owner) -> None:
    cells = list(owner.cells.values())
    await memory.collect_on_schedule(
        live_actors=lambda: sum(cell.accounts.live_actors() for cell in cells)
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    logs.configure(level=arguments.log_level, json=arguments.json_logs)
    structlog.contextvars.bind_contextvars(owner=arguments.owner)
    try:
        config = load(arguments.config)
    except ConfigError as error:
        print(f"meterd owner {arguments.owner}: bad config: {error}", file=sys.stderr)
        return 2
    if not 0 <= arguments.owner < config.partitions.owners:
        print(
            f"meterd owner {arguments.owner}: --owner must be in 0..{config.partitions.owners - 1}"
            f" ([partitions] owners = {config.partitions.owners} in {arguments.config})",
            file=sys.stderr,
        )
        return 2
    if len(os.fsencode(arguments.socket)) > MAX_SOCKET_PATH:
        print(
            f"meterd owner {arguments.owner}: --socket {arguments.socket} is"
            f" {len(os.fsencode(arguments.socket))} bytes long; a Unix socket's path is at most"
            f" {MAX_SOCKET_PATH}: choose a shorter one",
            file=sys.stderr,
        )
        return 2
    try:
        trio.run(serve, config, arguments.owner, arguments.socket)
    except OwnerFailed as failed:
        reason = str(failed)
    else:
        return 0
    log.error("owner_failed", error=reason)
    print(f"meterd {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
