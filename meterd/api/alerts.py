"""Alert routes (docs/alerts.md): the configured rules, the deliveries of their crossings
(status, attempts, last error, next retry) and re-delivery of a failed one."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta
from starlette.responses import Response

from meterd.alerts._delivery import Delivery, DeliveryService
from meterd.model import canonical_quantity
from meterd.store.reader import MAX_EVENTS_LIMIT

from .answers import Closed, Time, json_answer
from .daemon import Daemon
from .errors import ApiError
from .models import Model, Name, Text
from .operations import FIND, GATEWAY, Operations, every_shard

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
