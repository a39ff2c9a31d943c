"""Threshold alerts delivered effectively once (protocol.md §4, docs/alerts.md).

* :mod:`._config`: ``[[webhooks]]`` and ``[[alerts]]``.
* :mod:`._eval`: the per-account evaluation the meter actor runs on the events it applies.
* :mod:`._outbox`: the outbox table, written in the actor's checkpoint transaction.
* :mod:`._delivery`: the supervised delivery service (signed POSTs, retries).
"""

from ._config import AlertPeriod, AlertRule, Webhook, check_alerts

__all__ = ["AlertPeriod", "AlertRule", "Webhook", "check_alerts"]
