"""Alert routes (docs/alerts.md): the configured rules, the rules of one account (create,
list, delete), the deliveries of their crossings (status, attempts, last error, next retry)
and re-delivery of a failed one."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import structlog
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from meterd.alerts._config import ALERT_NAME, AlertRule, check_alert
from meterd.alerts._crossings import crossings_of
from meterd.alerts._delivery import Delivery, DeliveryService
from meterd.alerts._rules import StoredRule, account_rules, rule_text
from meterd.model import canonical_quantity
from meterd.schema import Check
from meterd.store.reader import MAX_EVENTS_LIMIT

from .answers import Closed, Time, json_answer
from .bodies import read_json
from .daemon import Daemon
from .errors import ApiError
from .models import DECIMAL_PATTERN, Account, AccountPath, AuditText, Model, Month, Name, Text
from .operations import ACCOUNT, FIND, GATEWAY, Operations, every_shard

log = structlog.get_logger("meterd.api")

ops = Operations()

Status = Literal["pending", "delivered", "failed"]


class AlertRuleAnswer(Closed):
    name: str
    meter: str
    period: str
    threshold: str | None
    spend: str | None
    accounts: list[str] | None
    webhook: str


class AlertRules(Closed):
    alerts: list[AlertRuleAnswer]


class DeliveryAnswer(Closed):
    id: str
    account: str
    alert: str
    webhook: str
    period: str
    event_id: Annotated[str, Meta(description="The event that crossed the threshold.")]
    created_at: Time
    status: Status
    attempts: int
    last_attempt_at: Time | None
    next_attempt_at: Annotated[Time | None, Meta(description="The next retry (pending only).")]
    last_error: str | None
    delivered_at: Time | None


class Deliveries(Closed):
    deliveries: list[DeliveryAnswer]
    counts: dict[str, int]
    oldest_undelivered_ms: Annotated[
        int | None, Meta(description="Age of the oldest pending delivery's crossing.")
    ]


class DeliveriesQuery(Model):
    account: Annotated[Text, Meta(description="Only this account's.")] | None = None
    status: Status | None = None
    limit: Annotated[
        int, Meta(ge=1, le=MAX_EVENTS_LIMIT, description="At most this many, oldest first.")
    ] = 100


class DeliveryPath(Model):
    delivery: Annotated[Name, Meta(description="The crossing's id (Meterd-Event-Id).")]


def _service(daemon: Daemon) -> DeliveryService:
    if daemon.deliveries is None:
        raise ApiError(503, "unavailable", "alert deliveries are not running in this daemon")
    return daemon.deliveries


def _delivery(d: Delivery) -> DeliveryAnswer:
    return DeliveryAnswer(**d.to_json())


@ops.get(
    "/v1/alerts",
    "alerts",
    "The configured threshold alerts ([[alerts]]).",
    answers={200: (AlertRules, "The rules, as configured.")},
    errors=(400, 401, 500),
    scope=GATEWAY,
)
async def alert_rules(daemon: Daemon) -> Response:
    return json_answer(
        AlertRules(
            alerts=[
                AlertRuleAnswer(
                    name=r.name,
                    meter=r.meter,
                    period=r.period.value,
                    threshold=None if r.threshold is None else canonical_quantity(r.threshold),
                    spend=None if r.spend is None else canonical_quantity(r.spend),
                    accounts=None if r.accounts is None else sorted(r.accounts),
                    webhook=r.webhook,
                )
                for r in daemon.config.alerts
            ]
        )
    )


@ops.get(
    "/v1/deliveries",
    "deliveries",
    "Deliveries of alert crossings, oldest first: status, attempts, last error, next retry.",
    answers={200: (Deliveries, "Deliveries and the counts by status.")},
    errors=(400, 401, 500, 503),
    scope=every_shard("deliveries"),
)
async def deliveries(daemon: Daemon, query: DeliveriesQuery) -> Response:
    service = _service(daemon)
    found = await service.deliveries(query.account, query.status, query.limit)
    return json_answer(
        Deliveries(
            deliveries=[_delivery(d) for d in found],
            counts=await service.counts(),
            oldest_undelivered_ms=service.oldest_undelivered_ms(),
        )
    )


@ops.post(
    "/v1/deliveries/{delivery}/redeliver",
    "redeliver",
    "Send a failed (or delivered) delivery again, with a fresh retry budget; the same id and body.",
    answers={200: (DeliveryAnswer, "The delivery, pending again.")},
    errors=(400, 401, 404, 500, 503),
    scope=FIND,
)
async def redeliver(daemon: Daemon, path: DeliveryPath) -> Response:
    service = _service(daemon)
    try:
        delivery = await service.redeliver(path.delivery)
    except KeyError:
        raise ApiError(
            404, "unknown_delivery", f"no delivery {path.delivery!r} (see GET /v1/deliveries)"
        ) from None
    return json_answer(_delivery(delivery))


# ---- rules of one account (docs/alerts.md, "Rules of one account") ------------------------

RuleName = Annotated[
    str, Meta(pattern=f"^{ALERT_NAME}$", description="The rule's name (unique in the account).")
]
DecimalText = Annotated[str, Meta(pattern=DECIMAL_PATTERN)]


class AccountRuleBody(Model):
    """A rule of one account: the keys of an ``[[alerts]]`` entry but ``accounts`` (the
    path names the account), and who makes it."""

    rules = (
        "exactly one of threshold and spend, greater than 0",
        "meter and webhook must be configured ([[meters]], [[webhooks]])",
        "the name must not be a configured alert's nor a live rule's of the account (409)",
    )

    name: RuleName
    meter: Text
    webhook: Text
    by: AuditText
    threshold: Annotated[DecimalText, Meta(description="Usage, a decimal string.")] | None = None
    spend: (
        Annotated[DecimalText, Meta(description="Instead: the meter's invoice amount.")] | None
    ) = None
    period: Literal["month"] = "month"


class AccountRuleAnswer(Closed):
    account: str
    name: str
    meter: str
    period: str
    threshold: str | None
    spend: str | None
    webhook: str
    source: Annotated[
        Literal["config", "account"],
        Meta(description="config: an [[alerts]] entry watching the account; account: its own."),
    ]
    active: Annotated[
        bool, Meta(description="Evaluated now (false: its meter or webhook is not configured).")
    ]
    inactive_reason: str | None = None
    created_by: str | None = None
    created_at: Time | None = None
    deleted_by: str | None = None
    deleted_at: Time | None = None


class AccountRules(Closed):
    account: str
    alerts: list[AccountRuleAnswer]


class RulePath(Model):
    account: Account
    name: RuleName


class DeleteRuleQuery(Model):
    by: Annotated[AuditText, Meta(description="Who deletes the rule (kept with it).")]


def _config_rule(account: str, r: AlertRule) -> AccountRuleAnswer:
    return AccountRuleAnswer(
        account=account,
        name=r.name,
        meter=r.meter,
        period=r.period.value,
        threshold=None if r.threshold is None else canonical_quantity(r.threshold),
        spend=None if r.spend is None else canonical_quantity(r.spend),
        webhook=r.webhook,
        source="config",
        active=True,
    )


def _stored_rule(daemon: Daemon, row: StoredRule) -> AccountRuleAnswer:
    config = daemon.config
    why = None
    if row.deleted_at is None:
        why = row.inactive_because(
            config.meters_by_name,
            frozenset(w.name for w in config.webhooks),
            frozenset(r.name for r in config.alerts),
        )
    return AccountRuleAnswer(
        account=row.account,
        name=row.name,
        meter=row.meter,
        period=row.period,
        threshold=row.threshold,
        spend=row.spend,
        webhook=row.webhook,
        source="account",
        active=row.deleted_at is None and why is None,
        inactive_reason=why,
        created_by=row.created_by,
        created_at=row.created_at,
        deleted_by=row.deleted_by,
        deleted_at=row.deleted_at,
    )


@ops.get(
    "/v1/accounts/{account}/alerts",
    "accountAlerts",
    "The alert rules watching one account: its own (made through the API) and the"
    " configured [[alerts]] that watch it.",
    answers={200: (AccountRules, "The rules, configured ones first.")},
    errors=(400, 401, 500),
    scope=ACCOUNT,
)
async def list_account_rules(daemon: Daemon, path: AccountPath) -> Response:
    account = path.account
    stored = await daemon.store.reader.run(partial(account_rules, account=account), "default")
    found = [_config_rule(account, r) for r in daemon.config.alerts if r.applies_to(account)]
    found += [_stored_rule(daemon, row) for row in stored]
    return json_answer(AccountRules(account=account, alerts=found))


@ops.post(
    "/v1/accounts/{account}/alerts",
    "createAccountAlert",
    "Create an alert rule of one account, checked like an [[alerts]] entry (every problem"
    " named, in error.problems); its next event is evaluated against it. A rule created"
    " while the month's value is already at or above its threshold crosses on the"
    " account's next counted event of the meter in that month.",
    answers={201: (AccountRuleAnswer, "The rule, stored and evaluated.")},
    errors=(400, 401, 409, 413, 500, 503),
    documented_body=AccountRuleBody,
    rules=AccountRuleBody.rules,
    scope=ACCOUNT,
)
async def create_account_rule(daemon: Daemon, path: AccountPath, request: Request) -> Response:
    account = path.account
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object (an alert rule)")
    table = dict(body)
    config = daemon.config
    check = Check(config.path.parent, {})
    by = table.pop("by", None)
    if by is None:
        check.problem("by", "missing: who makes the rule (kept with it)")
    elif not isinstance(by, str) or not by.strip() or len(by) > 1000:
        check.problem("by", "must be 1 to 1000 characters, not all blank")
    rule = check_alert(
        check,
        "",
        table,
        config.meters_by_name,
        None,
        [w.name for w in config.webhooks],
        {},
        account=account,
    )
    if check.problems or rule is None:
        raise ApiError(
            400,
            "invalid_rule",
            f"the alert rule has {len(check.problems)} problem(s): " + "; ".join(check.problems),
            parameter=check.problems[0].split(":", 1)[0] if check.problems else None,
            problems=check.problems,
        )
    assert isinstance(by, str)
    if rule.name in {r.name for r in config.alerts}:
        raise ApiError(
            409,
            "rule_exists",
            f"a configured alert ([[alerts]]) is named {rule.name!r}: choose another name",
        )
    book = daemon.accounts.alerts
    if book is not None:  # read before the write, so the book never misses it
        await book.ensure_loaded(daemon.store)
    if not await daemon.accounts.change_rule(account, rule.name, by, rule_text(rule)):
        raise ApiError(
            409,
            "rule_exists",
            f"account {account!r} already has an alert rule {rule.name!r}"
            f" (DELETE /v1/accounts/{account}/alerts/{rule.name} first)",
        )
    log.info("alert_rule_created", account=account, alert=rule.name, by=by)
    stored = await daemon.store.reader.run(partial(account_rules, account=account), "default")
    row = next(r for r in stored if r.name == rule.name)
    return json_answer(_stored_rule(daemon, row), 201)


@ops.delete(
    "/v1/accounts/{account}/alerts/{name}",
    "deleteAccountAlert",
    "Delete an alert rule of one account (its crossings and their deliveries stay); the"
    " account's next event is no longer evaluated against it.",
    answers={200: (AccountRuleAnswer, "The rule, as deleted (who and when).")},
    errors=(400, 401, 404, 500, 503),
    scope=ACCOUNT,
)
async def delete_account_rule(daemon: Daemon, path: RulePath, query: DeleteRuleQuery) -> Response:
    account, name = path.account, path.name
    book = daemon.accounts.alerts
    if book is not None:
        await book.ensure_loaded(daemon.store)
    if not await daemon.accounts.change_rule(account, name, query.by, None):
        raise ApiError(
            404,
            "unknown_rule",
            f"account {account!r} has no alert rule {name!r} of its own"
            f" (GET /v1/accounts/{account}/alerts lists them)",
        )
    log.info("alert_rule_deleted", account=account, alert=name, by=query.by)
    stored = await daemon.store.reader.run(
        partial(account_rules, account=account, deleted=True), "default"
    )
    row = [r for r in stored if r.name == name][-1]
    return json_answer(_stored_rule(daemon, row))


# ---- which event crossed which alert (explanations) ----------------------------------------


class CrossingDelivery(Closed):
    status: Status
    attempts: int
    last_error: str | None
    next_attempt_at: Time | None
    delivered_at: Time | None


class CrossingAnswer(Closed):
    id: Annotated[str, Meta(description="The crossing's id (Meterd-Event-Id).")]
    alert: str
    meter: str
    period: str
    event_id: Annotated[str, Meta(description="The event that crossed.")]
    crossed_at: Annotated[Time, Meta(description="That event's time.")]
    value_before: Annotated[
        str | None,
        Meta(description="The month's usage before that event (sum and count; else null)."),
    ]
    value: Annotated[str, Meta(description="The usage (or spend) right after it.")]
    threshold: str | None
    spend: str | None
    created_at: Time
    delivery: Annotated[
        CrossingDelivery | None, Meta(description="Null until the delivery service has it.")
    ]


class Crossings(Closed):
    account: str
    crossings: list[CrossingAnswer]


class CrossingsQuery(Model):
    period: Month | None = None


@ops.get(
    "/v1/accounts/{account}/crossings",
    "crossings",
    "Which event crossed which alert: the account's crossings (of one month, or all), each"
    " with the event, its time, the value before and after it, and its delivery.",
    answers={200: (Crossings, "The crossings, in the order they were decided.")},
    errors=(400, 401, 500),
    scope=ACCOUNT,
)
async def crossings(daemon: Daemon, path: AccountPath, query: CrossingsQuery) -> Response:
    account = path.account
    found = await daemon.store.reader.run(
        partial(crossings_of, account=account, period=query.period, meters=daemon.accounts.meters),
        "default",
    )
    states: dict[str, Delivery] = {}
    if daemon.deliveries is not None and found:
        listed = await daemon.deliveries.deliveries(account, None, MAX_EVENTS_LIMIT)
        states = {d.id: d for d in listed}
    answers: list[CrossingAnswer] = []
    for c in found:
        d = states.get(c.id)
        answers.append(
            CrossingAnswer(
                id=c.id,
                alert=c.alert,
                meter=c.meter,
                period=c.period,
                event_id=c.event_id,
                crossed_at=c.crossed_at,
                value_before=c.value_before,
                value=c.value,
                threshold=c.threshold,
                spend=c.spend,
                created_at=c.created_at,
                delivery=None
                if d is None
                else CrossingDelivery(
                    status=d.status,  # type: ignore[arg-type]
                    attempts=d.attempts,
                    last_error=d.last_error,
                    next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                    delivered_at=d.delivered_at,
                ),
            )
        )
    return json_answer(Crossings(account=account, crossings=answers))
