""":class:`Daemon`: the parts of the running daemon the routes read."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import supervisors as sv
from meterd.config import Config

from .errors import ApiError
from .metrics import Metrics

if TYPE_CHECKING:
    from meterd.accounts.service import Accounts
    from meterd.alerts._delivery import DeliveryService
    from meterd.billing import Billing, BillingGraphQL
    from meterd.ingest.server import IngestServer
    from meterd.store import Store
    from meterd.store.restarts import RestartLog


@dataclass(slots=True)
class Daemon:
    """What the routes read: the daemon's parts (the tree is set once it is built)."""

    config: Config
    accounts: Accounts
    store: Store
    ingest: IngestServer
    metrics: Metrics
    root: sv.Supervisor | None = None
    api_child_id: Hashable = "api"
    billing: Billing | None = None
    graphql: BillingGraphQL | None = None  # the one GraphQL endpoint (its bound on queries)
    restarts: RestartLog | None = None  # the tree's restart history, kept in the store
    deliveries: DeliveryService | None = None  # alert deliveries (docs/alerts.md)

    @property
    def tree(self) -> sv.Supervisor:
        if self.root is None:
            raise RuntimeError("the API is not attached to a tree")
        return self.root

    async def known_account(self, account: str) -> None:
        """404 unless the store (or a running actor) has seen ``account``.

        Checked before anything wakes the account: a query must not start actors for
        accounts that do not exist.
        """
        if account in self.accounts.registry or await self.store.reader.has_account(account):
            return
        raise ApiError(404, "unknown_account", f"no account {account!r} is known to the store")
