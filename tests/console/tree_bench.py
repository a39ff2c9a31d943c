"""Bench: the console's tree query (``/v1/tree/nodes``) against ``/v1/tree`` with many awake
accounts, in the same command.

``python -m tests.console.tree_bench [--accounts 90000] [--repeats 5]`` starts a daemon
subprocess (the shipped config, free ports, a temporary store), wakes ``--accounts`` accounts
(one event each, 500 a batch), then times over HTTP, median of ``--repeats``:

* baseline: ``GET /v1/tree?limit=50`` (the tree as it was: the first 50 children per node);
* ``GET /v1/tree/nodes?limit=50`` (tree order, first page), ``?sort=rate&order=desc``,
  ``?search=...`` (one account), ``?offset=N-50`` (the last page);
* the status filters: ``restarting``, ``stopped``, ``hibernated``, ``quarantined`` (a look
  at the few actors of that status only), ``running`` (first page, and sorted by rate);
* ``?sort=restarts&order=desc``, with and without ``status=running`` (the restarted actors
  from their supervisor's index, the others known to have none).

The walk is linear in the awake actors; the browser gets 50 rows whatever the tree holds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=90_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from tests.console.conftest import account_name, populate
    from tests.procs.daemon import running_daemon

    with (
        tempfile.TemporaryDirectory() as where,
        running_daemon(Path(where), idle_timeout=3600) as daemon,
    ):
        started = time.perf_counter()
        populate(daemon, args.accounts, poll_pause=2.0)  # returns once every actor is awake
        woke = time.perf_counter() - started
        headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
        with httpx.Client(base_url=daemon.api_url, headers=headers, timeout=120) as client:
            total = client.get("/v1/tree/nodes", params={"limit": 1}).json()["total"]
            cases: list[tuple[str, str, dict[str, str | int]]] = [
                ("baseline /v1/tree?limit=50", "/v1/tree", {"limit": 50}),
                ("nodes, first page", "/v1/tree/nodes", {"limit": 50}),
                ("nodes, sort=rate desc", "/v1/tree/nodes", {"sort": "rate", "order": "desc"}),
                ("nodes, search one account", "/v1/tree/nodes", {"search": account_name(4321)}),
                ("nodes, last page", "/v1/tree/nodes", {"offset": max(0, total - 50)}),
                ("nodes, status=restarting", "/v1/tree/nodes", {"status": "restarting"}),
                ("nodes, status=stopped", "/v1/tree/nodes", {"status": "stopped"}),
                ("nodes, status=hibernated", "/v1/tree/nodes", {"status": "hibernated"}),
                ("nodes, status=quarantined", "/v1/tree/nodes", {"status": "quarantined"}),
                ("nodes, status=running", "/v1/tree/nodes", {"status": "running"}),
                (
                    "nodes, running, sort=rate",
                    "/v1/tree/nodes",
                    {"status": "running", "sort": "rate", "order": "desc"},
                ),
                (
                    "nodes, sort=restarts desc",
                    "/v1/tree/nodes",
                    {"sort": "restarts", "order": "desc"},
                ),
                (
                    "nodes, running, sort=restarts",
                    "/v1/tree/nodes",
                    {"status": "running", "sort": "restarts", "order": "desc"},
                ),
            ]
            print(
                f"{total} live nodes ({args.accounts} accounts woken in {woke:.1f} s);"
                f" median of {args.repeats}, ms per request, answer bytes:"
            )
            for name, path, params in cases:
                times = []
                size = 0
                for _ in range(args.repeats):
                    begin = time.perf_counter()
                    response = client.get(path, params=params)
                    times.append((time.perf_counter() - begin) * 1000)
                    response.raise_for_status()
                    size = len(response.content)
                print(f"  {name:30} {statistics.median(times):8.1f} ms  {size:9,d} B")


if __name__ == "__main__":
    main()
