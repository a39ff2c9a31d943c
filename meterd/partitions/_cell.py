"""A cell: everything that holds the accounts of one store file (docs/partitions.md "Cells").

A :class:`Cell` is built from the config, its three files (the store, the billing
database, the alert deliveries' database) and a name. It holds:

* the :class:`~meterd.store.Store` (its writer, to run, and its reader);
* :class:`~meterd.accounts.service.Accounts` (the meter actors, sweeper, deliverer);
* the :class:`~meterd.alerts._runtime.AlertBook` and the alert
  :class:`~meterd.alerts._delivery.DeliveryService`;
* :class:`~meterd.billing.Billing` (its database opened by :meth:`Cell.open`);
* a :class:`~meterd.store.restarts.RestartLog` (the tree's restarts, in the store);
* a :class:`~meterd.api.Daemon` with its starlette app (:meth:`Cell.app`): every route of
  the operator API, answering for the accounts of this cell.

Its children are ``store-writer``, ``accounts`` and ``deliveries``, under a
``rest_for_one`` supervisor when the cell runs on its own (:attr:`Cell.supervisor`, named
after the cell: ``shard-007`` in an owner process), or at the head of the daemon's root
when ``[partitions] owners = 0`` (:func:`meterd.app.build`: one cell on ``[store] path``,
with ingest and the API after it). Either way the accounts side is built here, once.

Per-process limits are shared: a process holding ``cells`` cells gives each
``[accounts] max_awake // cells`` awake actors and ``[ingest] max_in_flight_events // cells``
events of in-flight budget (at least 1 each); with one cell (``owners = 0``) they are the
config's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from starlette.applications import Starlette

import supervisors as sv
from meterd.accounts.service import Accounts
from meterd.alerts._delivery import DeliveryService
from meterd.alerts._metrics import DeliveryCollector
from meterd.alerts._runtime import AlertBook
from meterd.alerts._spend import BookPricing
from meterd.api import Daemon, Metrics, build_app
from meterd.billing import Billing, BillingDB, PriceBook
from meterd.billing._metrics import BillingCollector
from meterd.config import Config, StoreConfig
from meterd.ingest.server import IngestServer
from meterd.schema import Duration
from meterd.store import CommitRounds, Store
from meterd.store.restarts import RestartLog

from ._layout import shard_files, shard_name

__all__ = ["Cell", "share", "wal_shared"]


def wal_shared(store: StoreConfig, cells: int) -> StoreConfig:
    """``[store]`` for one of ``cells`` cells of a process: ``wal_checkpoint_interval``
    times ``cells``, so the process checkpoints its files as often in all as one store file
    its own (each checkpoint copies the file's pages committed since the last one and
    fsyncs it: at the config's interval, 8 files cost 8 times the checkpoints of one, and
    their hot pages, each file's own, 8 times the copies; docs/partitions.md "Cells")."""
    interval = store.wal_checkpoint_interval.ms
    if cells <= 1 or not interval:
        return store
    return dataclasses.replace(store, wal_checkpoint_interval=Duration(interval * cells))


def share(limit: int, cells: int) -> int:
    """``limit`` split evenly over ``cells`` cells of one process (at least 1 each)."""
    if cells < 1:
        raise ValueError(f"a process holds at least one cell, not {cells}")
    return max(1, limit // cells)


class Cell:
    """The accounts side of one store file (see the module doc).

    ``cells`` is how many cells the process holds (the per-process limits are split over
    them); ``rounds``, the commit loop the cells of one process share (its writer then
    commits in that loop's rounds, with the other files of the process). Nothing is
    started here: run :meth:`child_specs` (or :attr:`supervisor`), and :meth:`open` the
    billing database before serving.
    """

    def __init__(
        self,
        config: Config,
        *,
        store_path: Path,
        billing_path: Path,
        deliveries_path: Path,
        name: str,
        cells: int = 1,
        rounds: CommitRounds | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.store_path = store_path
        self.store = Store.at(
            store_path,
            wal_shared(config.store, cells),
            audit_retention_ms=config.dedupe_window.ms,  # docs/accounts.md "Audit trail"
            dedupe_window_ms=config.dedupe_window.ms,  # docs/accounts.md "Dedupe retention"
            meter_dimensions={m.name: len(m.dimensions) for m in config.meters},
            rounds=rounds,  # an owner's cells share one commit loop (meterd.store._rounds)
        )
        prices = PriceBook(config.prices, config.meters_by_name)
        self.alerts = AlertBook(
            config.alerts,
            config.meters_by_name,
            history_ms=config.dedupe_window.ms,
            spend_pricing=BookPricing(
                prices,
                currency=config.billing.currency,
                amount_places=config.billing.amount_places,
            ),
            webhooks=[w.name for w in config.webhooks],
        )
        # With a webhook, rules of one account can be made through the API (docs/alerts.md).
        alerting = bool(config.alerts or config.webhooks)
        accounts_config = dataclasses.replace(
            config.accounts, max_awake=share(config.accounts.max_awake, cells)
        )
        self.accounts = Accounts(
            self.store,
            config.meters_by_name,
            accounts_config,
            checkpoint_interval=config.store.checkpoint_interval,
            max_in_flight_events=share(config.ingest.max_in_flight_events, cells),
            alerts=self.alerts if alerting else None,
        )
        self.deliveries = DeliveryService(  # the outbox to the webhooks (docs/alerts.md)
            self.store,
            self.alerts,
            config.webhooks,
            deliveries_path,
            wake=self.accounts.checkpoint if alerting else None,
        )
        # The daemon's ingest server (owners = 0: meterd.app runs it after the cell); in an
        # owner process it is never started and its counters stay 0 (the gateway counts).
        self.ingest = IngestServer(config, self.accounts)
        self.metrics = Metrics()
        self.billing = Billing(  # its database is opened by open()
            self.accounts,
            BillingDB(billing_path),
            prices,
            currency=config.billing.currency,
            amount_places=config.billing.amount_places,
        )
        self.daemon = Daemon(
            config, self.accounts, self.store, self.ingest, self.metrics, billing=self.billing
        )
        self.daemon.deliveries = self.deliveries
        # Every restart in the tree is kept in the store (the console's restart history).
        self.restarts = RestartLog(store_path)
        self.daemon.restarts = self.restarts
        self._app: Starlette | None = None
        self._supervisor: sv.Supervisor | None = None

    @classmethod
    def for_shard(
        cls, config: Config, shard: int, *, cells: int = 1, rounds: CommitRounds | None = None
    ) -> Cell:
        """The cell of ``shard``: its files (:func:`shard_files`), named after it
        (``shard-007``). Its directory must exist (the caller makes it, with its mode)."""
        files = shard_files(config, shard)
        return cls(
            config,
            store_path=files.store,
            billing_path=files.billing,
            deliveries_path=files.deliveries,
            name=shard_name(shard),
            cells=cells,
            rounds=rounds,
        )

    @property
    def supervisor(self) -> sv.Supervisor:
        """The cell as a tree of its own (``rest_for_one`` over :meth:`child_specs`, named
        after the cell), built on first use: an owner process runs one per shard."""
        if self._supervisor is None:
            self._supervisor = sv.Supervisor(
                self.child_specs(), strategy=sv.Strategy.REST_FOR_ONE, name=self.name
            )
        return self._supervisor

    def child_specs(self) -> list[sv.ChildSpec]:
        """``store-writer``, ``accounts``, ``deliveries``: in this order (rest_for_one: a
        writer that dies takes the accounts and deliveries with it)."""
        return [
            self.store.writer_spec(),
            self.accounts.supervisor_spec(),
            self.deliveries.child_spec(),
        ]

    def attach(self, root: sv.Supervisor) -> None:
        """``root`` is the tree the cell's API shows and acts on (``/v1/tree``, actor
        kill/restart): the daemon's root with owners = 0, :attr:`supervisor` in an owner.
        Its restarts are recorded in the cell's store, and its counters read by
        ``/metrics``."""
        self.daemon.root = root
        root.on_restart = self.restarts.record
        self.metrics.watch(root, self.accounts, self.store, self.ingest)
        self.metrics.registry.register(BillingCollector(self.billing))  # restatements by cause
        self.metrics.registry.register(DeliveryCollector(self.deliveries))

    def app(self) -> Starlette:
        """The cell's starlette application (built once): the operator API over its
        accounts, called in-process by the owner for the gateway's HTTP queries."""
        if self._app is None:
            self._app = build_app(self.daemon)
        return self._app

    async def open(self) -> None:
        """Open the billing database (a bad one fails the start, not a request)."""
        await self.billing.db.open()

    async def aclose(self) -> None:
        """Close the billing database and the store's reader (the writer closes its own)."""
        await self.billing.db.aclose()
        await self.store.aclose()
