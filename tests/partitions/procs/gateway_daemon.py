"""The gateway daemon with stand-in owners: ``python -m tests.partitions.procs.gateway_daemon
--config PATH [--real-owner]``.

:func:`meterd.gateway.serve_gateway` on ``PATH``, its owners being
:mod:`tests.partitions.procs.ledger_owner` processes (durable dedupe ledgers, exact sums),
or, with ``--real-owner``, meterd's own (``python -m meterd.partitions.owner``). Logs are
JSON lines on stderr. Run it from the repository's root (the owners are ``-m`` modules).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
import trio

from meterd.config import Config, load
from meterd.gateway import MAX_SECONDS, serve_gateway
from meterd.logs import configure
from meterd.startup import DaemonFailed, StartupFailed


def ledger_owner(config: Config, owner: int, socket_path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.partitions.procs.ledger_owner",
        "--config",
        str(config.path),
        "--owner",
        str(owner),
        "--socket",
        socket_path,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="gateway_daemon")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--real-owner", action="store_true")
    parser.add_argument(
        "--max-seconds", type=float, help="the root's restart intensity window (a test's)"
    )
    args = parser.parse_args()
    configure(level="info", json=True)
    config = load(args.config)
    command = None if args.real_owner else ledger_owner
    try:
        trio.run(
            lambda: serve_gateway(
                config, owner_command=command, max_seconds=args.max_seconds or MAX_SECONDS
            )
        )
    except (StartupFailed, DaemonFailed) as failed:  # as meterd run says it
        event = "meterd_start_failed" if isinstance(failed, StartupFailed) else "meterd_failed"
        structlog.get_logger("meterd").error(event, error=str(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
