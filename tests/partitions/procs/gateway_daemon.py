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

import trio

from meterd.config import Config, load
from meterd.gateway import serve_gateway
from meterd.logs import configure


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
    args = parser.parse_args()
    configure(level="info", json=True)
    config = load(args.config)
    trio.run(lambda: serve_gateway(config, owner_command=None if args.real_owner else ledger_owner))


if __name__ == "__main__":
    main()
