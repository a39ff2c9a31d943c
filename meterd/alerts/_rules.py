"""Alert rules of one account, made through the API (docs/alerts.md, "Rules of one
account"): checked by the config's own declaration (:func:`._config.check_alert`), stored
in the account's store (table ``alert_rules``, schema version 11, written by the store
writer's :class:`~meterd.store._ops.AlertRuleWrite`), and read back here."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from meterd.model import Meter, canonical_quantity

from ._config import AlertPeriod, AlertRule

__all__ = ["StoredRule", "account_rules", "live_rules", "rule_text"]

_COLUMNS = (
    "account, name, meter, period, threshold, spend, webhook, created_by, created_at,"
    " deleted_by, deleted_at, armed_after"
)


@dataclass(frozen=True, slots=True)
class StoredRule:
    """One row of ``alert_rules``: a rule of one account, who made it and when (and who
    deleted it and when, for a deleted one)."""

    account: str
    name: str
    meter: str
    period: str
    threshold: str | None
    spend: str | None
    webhook: str
    created_by: str
    created_at: int
    deleted_by: str | None = None
    deleted_at: int | None = None
    armed_after: int = 0  # the last journal batch committed before it was made

    def rule(self) -> AlertRule:
        return AlertRule(
            name=self.name,
            meter=self.meter,
            webhook=self.webhook,
            threshold=None if self.threshold is None else Decimal(self.threshold),
            spend=None if self.spend is None else Decimal(self.spend),
            accounts=frozenset((self.account,)),
            period=AlertPeriod(self.period),
            armed_after=self.armed_after,
        )

    def inactive_because(
        self, meters: Mapping[str, Meter], webhooks: frozenset[str], config_names: frozenset[str]
    ) -> str | None:
        """Why the daemon does not evaluate this rule now (None: it does): its meter or
        webhook is no longer configured, or a configured alert took its name."""
        if self.meter not in meters:
            return f"meter {self.meter!r} is not configured"
        if self.webhook not in webhooks:
            return f"webhook {self.webhook!r} is not configured"
        if self.name in config_names:
            return f"a configured [[alerts]] entry is named {self.name!r} too"
        return None


def rule_text(rule: AlertRule) -> tuple[str, str, str | None, str | None, str]:
    """``(meter, period, threshold, spend, webhook)`` of a checked rule, as stored."""
    return (
        rule.meter,
        rule.period.value,
        None if rule.threshold is None else canonical_quantity(rule.threshold),
        None if rule.spend is None else canonical_quantity(rule.spend),
        rule.webhook,
    )


def live_rules(conn: sqlite3.Connection) -> list[StoredRule]:
    """Every rule not deleted, of every account of the store."""
    return [
        StoredRule(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM alert_rules WHERE deleted_at IS NULL ORDER BY rule_id"
        )
    ]


def account_rules(
    conn: sqlite3.Connection, account: str, *, deleted: bool = False
) -> list[StoredRule]:
    """The rules of ``account`` not deleted (and the deleted ones too with ``deleted``),
    oldest first."""
    live = "" if deleted else " AND deleted_at IS NULL"
    return [
        StoredRule(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM alert_rules WHERE account = ?{live} ORDER BY rule_id",
            (account,),
        )
    ]
