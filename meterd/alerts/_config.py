"""``[[webhooks]]`` and ``[[alerts]]`` (protocol.md §4): each key declared once here.

:func:`check_alerts` turns the two arrays of tables into :class:`Webhook` and
:class:`AlertRule` values, reporting every problem with its key (``alerts[1].webhook:
'biling' is not a configured webhook (did you mean 'billing'?)``). Secrets (``secret`` or
``secret_env``) never appear in a problem, a log line or a ``repr``.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Final
from urllib.parse import urlsplit

from meterd.model import Meter
from meterd.schema import Check, Invalid, check_fields, dotted, got, key, show, suggest

__all__ = [
    "AlertPeriod",
    "AlertRule",
    "Webhook",
    "check_alert",
    "check_alerts",
    "threshold_text",
]

WEBHOOK_NAME: Final = r"[a-z0-9][a-z0-9._-]{0,63}"
ALERT_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_DECIMAL: Final = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")
_NAME_TEXT: Final = "1-64 characters of {chars}, '.', '_', '-', starting with a letter or digit"


def threshold_text(value: object) -> Decimal:
    """A decimal string ``> 0`` (exact, plain: no exponent, no sign)."""
    expected = 'expected a decimal string like "1000" or "25.00"'
    if isinstance(value, float):
        raise Invalid(f"{expected} (a TOML float is inexact), {got(value)}")
    if isinstance(value, int) and not isinstance(value, bool):
        raise Invalid(f'{expected} (write it as a string: "{value}"), {got(value)}')
    if not isinstance(value, str):
        raise Invalid(f"{expected}, {got(value)}")
    if not _DECIMAL.fullmatch(value):
        raise Invalid(f"{expected} (digits, optionally a '.' and more digits), got {show(value)}")
    number = Decimal(value)
    if number == 0:
        raise Invalid(f"must be greater than 0, got {show(value)}")
    return number


def webhook_url(value: object) -> str:
    """An absolute ``http://`` or ``https://`` URL with a host."""
    if not isinstance(value, str):
        raise Invalid(f"expected a URL like 'https://billing.internal/hooks/meterd', {got(value)}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"expected an http:// or https:// URL with a host, got {show(value)}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid(f"the port of {show(value)} is not a number 0-65535") from None
    return value


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AlertPeriod(enum.Enum):
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Webhook:
    """One ``[[webhooks]]`` entry: where crossings are delivered, and the key signing them."""

    name: Annotated[
        str,
        key(
            "The webhook's name, as alerts refer to it.",
            pattern=WEBHOOK_NAME,
            invalid="a valid webhook name (" + _NAME_TEXT.format(chars="a-z, 0-9") + ")",
        ),
    ]
    url: Annotated[
        str,
        key(
            "Where deliveries are POSTed (http:// is allowed; a warning when not loopback).",
            parse=webhook_url,
            kind="http:// or https:// URL",
            missing="the receiver's URL, like 'https://billing.internal/hooks/meterd'",
        ),
    ]
    secret: Annotated[
        str,
        key(
            "HMAC-SHA256 key signing every delivery (Meterd-Signature).",
            secret=True,
            pattern=r"[\x21-\x7e]{16,}",
            invalid="at least 16 printable ASCII characters without spaces",
        ),
    ] = field(repr=False)
    max_concurrency: Annotated[
        int,
        key(
            "Deliveries to this webhook in flight at once (each account's stay in order).",
            unit="requests",
            ge=1,
            le=1000,
        ),
    ] = 4

    @property
    def loopback(self) -> bool:
        return is_loopback(self.url)


@dataclass(frozen=True, slots=True)
class AlertEntry:
    """One ``[[alerts]]`` entry as written; :func:`check_alerts` makes it an AlertRule."""

    name: Annotated[
        str,
        key(
            "The alert's name (unique), in every delivery.",
            pattern=ALERT_NAME,
            invalid="a valid alert name (" + _NAME_TEXT.format(chars="A-Z, a-z, 0-9") + ")",
        ),
    ]
    meter: Annotated[str, key("The meter whose usage (or spend) is watched.")]
    webhook: Annotated[str, key("The [[webhooks]] entry crossings are delivered to.")]
    period: Annotated[
        AlertPeriod, key("The period usage is counted over: the billing month, UTC.")
    ] = AlertPeriod.MONTH
    threshold: (
        Annotated[
            Decimal,
            key(
                "Usage in the meter's unit at or above which the alert fires once per period.",
                parse=threshold_text,
                kind='decimal string (`"1000"`)',
            ),
        ]
        | None
    ) = None
    spend: (
        Annotated[
            Decimal,
            key(
                "Instead of threshold: the amount of the meter's invoice lines (price book,"
                " caps included) at or above which it fires.",
                parse=threshold_text,
                kind='decimal string (`"25.00"`)',
            ),
        ]
        | None
    ) = None
    accounts: Annotated[
        frozenset[str] | None,
        key("The accounts it watches (absent: every account).", kind="array of account ids"),
    ] = None


@dataclass(frozen=True, slots=True)
class AlertRule:
    """A checked alert: exactly one of ``threshold`` and ``spend`` is set."""

    name: str
    meter: str
    webhook: str
    threshold: Decimal | None = None
    spend: Decimal | None = None
    accounts: frozenset[str] | None = None
    period: AlertPeriod = AlertPeriod.MONTH
    armed_after: int = 0
    """A rule of one account evaluates the events committed after it was made: those of
    journal batches above this one (0: every event, as a configured rule)."""

    def applies_to(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    @property
    def limit(self) -> Decimal:
        """The threshold or the spend."""
        value = self.threshold if self.threshold is not None else self.spend
        assert value is not None
        return value

    def crossing_id(self, account: str, period: str) -> str:
        """The id of this rule's crossing for ``account`` in ``period``: derived from them
        (and from the rule's kind and value, so a changed threshold is a new rule), so a
        replay, a restart or a wake decides the same crossing with the same id."""
        kind = "threshold" if self.threshold is not None else "spend"
        text = "\x00".join((self.name, kind, str(self.limit), account, period))
        return "alr_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def check_alerts(
    check: Check,
    webhooks_value: object,
    alerts_value: object,
    meters: Mapping[str, Meter],
    declared: set[str] | None,
) -> tuple[tuple[Webhook, ...], tuple[AlertRule, ...]]:
    """The ``[[webhooks]]`` and ``[[alerts]]`` arrays, checked (problems go to ``check``).
    ``meters``: the valid meters; ``declared``: every meter name the file gives (None when
    some entry has none), so a meter declared but invalid is not reported twice."""
    hooks: list[Webhook] = []
    hook_names: dict[str, str] = {}
    for prefix, table in check.array_of_tables("webhooks", webhooks_value):
        values, ok = check_fields(Webhook, table, prefix, check)
        name = values.get("name")
        ok = check.unique_name(prefix, name, hook_names) and ok
        url = values.get("url")
        if url is not None and url.startswith("http://") and not is_loopback(url):
            check.warn(
                f"{prefix}.url",
                f"{url} is plain http:// to a host that is not loopback: deliveries (signed,"
                " not encrypted) cross the network in clear",
            )
        if ok:
            hooks.append(Webhook(**values))
    rules: list[AlertRule] = []
    rule_names: dict[str, str] = {}
    for prefix, table in check.array_of_tables("alerts", alerts_value):
        rule = check_alert(check, prefix, table, meters, declared, hook_names, rule_names)
        if rule is not None:
            rules.append(rule)
    return tuple(hooks), tuple(rules)


def check_alert(
    check: Check,
    prefix: str,
    table: Mapping[str, object],
    meters: Mapping[str, Meter],
    declared: Collection[str] | None,
    webhooks: Collection[str],
    names: dict[str, str],
    *,
    account: str | None = None,
) -> AlertRule | None:
    """One ``[[alerts]]`` entry (at ``prefix``), or one account's rule (``account``: the
    API's body, whose account is the path's, so it takes no ``accounts`` key): the rule, or
    None with every problem in ``check``. ``webhooks``: the configured webhook names;
    ``names``: the rule names taken so far (a repeat is a problem)."""
    values, ok = check_fields(AlertEntry, table, prefix, check)
    name = values.get("name")
    ok = check.unique_name(prefix, name, names) and ok
    meter = values.get("meter")
    if isinstance(meter, str) and meter not in meters:
        if declared is None or meter not in declared:
            hint = suggest(meter, sorted(declared if declared is not None else meters))
            check.problem(dotted(prefix, "meter"), f"{meter!r} is not a configured meter{hint}")
        ok = False
    hook = values.get("webhook")
    if isinstance(hook, str) and hook not in webhooks:
        hint = suggest(hook, sorted(webhooks))
        check.problem(dotted(prefix, "webhook"), f"{hook!r} is not a configured webhook{hint}")
        ok = False
    threshold, spend = values.get("threshold"), values.get("spend")
    if "threshold" in table and "spend" in table:
        check.problem(dotted(prefix, "spend"), "give threshold (usage) or spend (amount), not both")
        ok = False
    elif "threshold" not in table and "spend" not in table:
        check.problem(
            dotted(prefix, "threshold"),
            'missing: give threshold = "<usage>" or spend = "<amount>"',
        )
        ok = False
    accounts = table.get("accounts")
    if account is not None and "accounts" in table:
        check.problem(
            dotted(prefix, "accounts"),
            f"a rule of one account watches that account ({account!r}, from the path):"
            " leave the key out",
        )
        ok = False
    elif isinstance(accounts, list) and not accounts:
        check.problem(
            dotted(prefix, "accounts"),
            "an empty list watches no account; leave the key out for all",
        )
        ok = False
    if not ok:
        return None
    return AlertRule(
        name=values["name"],
        meter=values["meter"],
        webhook=values["webhook"],
        threshold=threshold,
        spend=spend,
        accounts=frozenset((account,)) if account is not None else values.get("accounts"),
        period=values.get("period", AlertPeriod.MONTH),
    )
