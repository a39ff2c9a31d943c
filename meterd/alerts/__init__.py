"""Threshold alerts delivered effectively once (protocol.md §4, docs/alerts.md).

* :mod:`._config`: ``[[webhooks]]`` and ``[[alerts]]``.
* :mod:`._eval`: the per-account evaluation the meter actor runs on the events it applies.
* :mod:`._outbox`: the outbox table, written in the actor's checkpoint transaction.
* :mod:`._delivery`: the supervised delivery service (signed POSTs, retries).
* :mod:`._delivered`: which crossings a deliveries database knows delivered; another's
  (a snapshot's copy, in cluster mode) merged into it by id.
"""

from ._config import AlertPeriod, AlertRule, Webhook, check_alerts
from ._delivered import delivered_count, import_delivered, rebase_deliveries

__all__ = [
    "AlertPeriod",
    "AlertRule",
    "Webhook",
    "check_alerts",
    "delivered_count",
    "import_delivered",
    "rebase_deliveries",
]
