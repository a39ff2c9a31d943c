"""The daemon: one root supervisor over every part of meterd.

The tree::

    root (rest_for_one)
    ├── store-writer        the single SQLite writer (group commit)
    ├── accounts (one_for_one)
    │   ├── meters          DynamicSupervisor: one MeterActor per awake account
    │   ├── sweeper         checkpoints and hibernation
    │   └── deliverer       wakes sleeping accounts, delivers to full mailboxes
    ├── deliveries          the alert outbox to the webhooks (meterd.alerts)
    ├── ingest              the producer websocket endpoint (meterd.ingest)
    └── api                 the operator HTTP API (meterd.api)

``rest_for_one``: if the store writer dies, everything after it (the accounts,
ingest and the API) is restarted too, because their in-flight work depended on
it; an accounts failure leaves the writer alone. Children stop in reverse order:
the API first (requests in flight finish), then ingest finishes and acknowledges
the batches it read while the accounts and the writer still run. docs/architecture.md
follows one batch through the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import structlog

import supervisors as sv
from meterd import __version__, memory
from meterd.accounts.service import Accounts
from meterd.alerts._delivery import DeliveryService
from meterd.api import ApiServer
from meterd.billing import Billing
from meterd.config import Config
from meterd.gateway import serve_gateway
from meterd.ingest.server import IngestServer
from meterd.partitions._cell import Cell
from meterd.startup import (
    StartupFailed,
    describe,
    hold_store,
    prepare_paths,
    run_until_signalled,
)
from meterd.store import Store

log = structlog.get_logger("meterd")


@dataclass(frozen=True, slots=True)
class Services:
    """The running parts of the daemon, as other layers and tests reach them."""

    root: sv.Supervisor
    store: Store
    accounts: Accounts
    ingest: IngestServer
    api: ApiServer
    billing: Billing
    deliveries: DeliveryService | None = None


def build(config: Config) -> Services:
    """Build (not start) the supervision tree for ``config``: one cell on ``[store] path``
    (:class:`meterd.partitions._cell.Cell`: the writer, the accounts, the deliveries), then
    ingest and the API."""
    cell = Cell(
        config,
        store_path=config.store_path,
        billing_path=config.billing_path,
        deliveries_path=config.store_path.with_name("deliveries.sqlite3"),
        name="root",
    )
    api = ApiServer(cell.daemon)
    root = sv.Supervisor(
        [*cell.child_specs(), cell.ingest.child_spec(), api.child_spec()],
        strategy=sv.Strategy.REST_FOR_ONE,
        name="root",
    )
    cell.attach(root)
    return Services(
        root, cell.store, cell.accounts, cell.ingest, api, cell.billing, cell.deliveries
    )


async def serve(config: Config) -> None:
    """Run the daemon until SIGINT or SIGTERM, then shut the tree down in order (see
    :func:`_serve`), holding the store against ``meterd migrate partitions`` meanwhile and
    refusing files in another layout than ``[partitions]`` asks (``hold_store``)."""
    if config.cluster is not None:  # a node of a cluster on NATS (docs/cluster.md)
        from meterd.cluster._node import serve_node

        await serve_node(config)
        return
    with hold_store(config):
        await _serve(config)


async def _serve(config: Config) -> None:
    """Run the daemon until SIGINT or SIGTERM, then shut the tree down in order.

    Raises :class:`meterd.startup.StartupFailed` (its message one sentence) when it cannot
    start: a directory that cannot be created, a database that cannot be opened, a child of
    the tree that fails to start; :class:`meterd.startup.DaemonFailed` (one sentence too)
    when the tree gives up after the start (a child of the root failing too often)."""
    if config.partitions.owners >= 1:  # a gateway, the accounts in owner processes
        await serve_gateway(config)
        return
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    prepare_paths(config)
    services = build(config)
    try:  # a bad billing database fails the start, not a request
        await services.billing.db.open()
    except Exception as error:
        raise StartupFailed(describe(error, config, "billing.path")) from None
    memory.tune()
    pauses = memory.GcPauses(services.api.daemon.metrics.observe_gc_pause)
    pauses.install()

    def started() -> None:
        log.info("meterd_started", version=__version__, config=str(config.path))
        log.info("listening", ingest=services.ingest.url, api=services.api.url)

    try:
        await run_until_signalled(
            services.root,
            config,
            on_started=started,
            beside=[partial(memory.collect_on_schedule, live_actors=services.accounts.live_actors)],
        )
    finally:
        pauses.remove()
        await services.billing.db.aclose()
        await services.store.aclose()
    log.info("meterd_stopped")
