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

import signal
from dataclasses import dataclass
from functools import partial

import structlog
import trio

import supervisors as sv
from meterd import __version__, memory
from meterd.accounts.service import Accounts
from meterd.alerts._delivery import DeliveryService
from meterd.alerts._metrics import DeliveryCollector
from meterd.alerts._runtime import AlertBook
from meterd.alerts._spend import BookPricing
from meterd.api import ApiServer, Daemon, Metrics
from meterd.billing import Billing, BillingDB, PriceBook
from meterd.billing._metrics import BillingCollector
from meterd.config import Config
from meterd.gateway import serve_gateway
from meterd.ingest.server import IngestServer
from meterd.startup import DaemonFailed, StartupFailed, describe, describe_stop, prepare_paths
from meterd.store import Store
from meterd.store.restarts import RestartLog

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
    """Build (not start) the supervision tree for ``config``."""
    store = Store.at(
        config.store_path,
        config.store,
        audit_retention_ms=config.dedupe_window.ms,  # docs/accounts.md "Audit trail"
        dedupe_window_ms=config.dedupe_window.ms,  # docs/accounts.md "Dedupe retention"
        meter_dimensions={m.name: len(m.dimensions) for m in config.meters},
    )
    prices = PriceBook(config.prices, config.meters_by_name)
    alerts = AlertBook(
        config.alerts,
        config.meters_by_name,
        history_ms=config.dedupe_window.ms,
        spend_pricing=BookPricing(
            prices, currency=config.billing.currency, amount_places=config.billing.amount_places
        ),
        webhooks=[w.name for w in config.webhooks],
    )
    # With a webhook, rules of one account can be made through the API (docs/alerts.md).
    alerting = bool(config.alerts or config.webhooks)
    accounts = Accounts(
        store,
        config.meters_by_name,
        config.accounts,
        checkpoint_interval=config.store.checkpoint_interval,
        max_in_flight_events=config.ingest.max_in_flight_events,
        alerts=alerts if alerting else None,
    )
    deliveries = DeliveryService(  # the outbox to the webhooks (docs/alerts.md)
        store,
        alerts,
        config.webhooks,
        config.store_path.with_name("deliveries.sqlite3"),
        wake=accounts.checkpoint if alerting else None,
    )
    ingest = IngestServer(config, accounts)
    metrics = Metrics()
    billing = Billing(  # its database (beside the store) is opened by serve()
        accounts,
        BillingDB(config.billing_path),
        prices,
        currency=config.billing.currency,
        amount_places=config.billing.amount_places,
    )
    daemon = Daemon(config, accounts, store, ingest, metrics, billing=billing)
    api = ApiServer(daemon)
    root = sv.Supervisor(
        [
            store.writer_spec(),
            accounts.supervisor_spec(),
            deliveries.child_spec(),
            ingest.child_spec(),
            api.child_spec(),
        ],
        strategy=sv.Strategy.REST_FOR_ONE,
        name="root",
    )
    daemon.root = root
    # Every restart in the tree is kept in the store (the console's restart history).
    daemon.restarts = RestartLog(config.store_path)
    root.on_restart = daemon.restarts.record
    metrics.watch(root, accounts, store, ingest)
    metrics.registry.register(BillingCollector(billing))  # restatements by cause
    metrics.registry.register(DeliveryCollector(deliveries))
    daemon.deliveries = deliveries
    return Services(root, store, accounts, ingest, api, billing, deliveries)


async def serve(config: Config) -> None:
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
    failed_start: str | None = None
    failed_run: str | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as collector:
                collector.start_soon(
                    partial(memory.collect_on_schedule, live_actors=services.accounts.live_actors)
                )
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(services.root.run)
                    except Exception as error:  # raised here, before a nursery wraps it
                        failed_start = describe(error, config)
                    else:
                        log.info("meterd_started", version=__version__, config=str(config.path))
                        log.info("listening", ingest=services.ingest.url, api=services.api.url)
                        async for signum in signals:
                            log.info("meterd_stopping", signal=signal.Signals(signum).name)
                            services.root.stop()
                            break
                collector.cancel_scope.cancel()
    except Exception as error:  # the tree gave up after the start (Trio's groups around it)
        failed_run = describe_stop(error, config)
    finally:
        pauses.remove()
    await services.billing.db.aclose()
    await services.store.aclose()
    if failed_start is not None:
        raise StartupFailed(failed_start)
    if failed_run is not None:
        raise DaemonFailed(failed_run)
    log.info("meterd_stopped")
