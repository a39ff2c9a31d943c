"""Live usage for dashboards (docs/api.md, "Live usage"): a websocket at
``/v1/accounts/{account}/usage/live`` streaming the account's usage per meter for the
current billing month as it changes.

* Authorised by the admin token or the account's own token (``meterd token ACCOUNT``:
  :func:`meterd.config.account_token`), in the handshake's ``Authorization: Bearer``
  header, or (browsers cannot set headers on a websocket) in the first message,
  ``{"type": "auth", "token": "..."}``, within :data:`AUTH_TIMEOUT`. Never in the URL. A
  wrong header is refused at the handshake (HTTP 403); a wrong first message is answered
  ``{"type": "error", "code": "unauthorized", ...}`` and closed (1008).
* Then the server sends ``{"type": "usage", ...}`` text messages: one at once (the current
  value), then one whenever a committed batch of the account changed a value, at most one
  per :data:`LIVE_INTERVAL` (changes in between are coalesced: the next message holds the
  latest values), and one when a new month starts. Messages from the client after the
  first are ignored.
* The values are those of ``/usage/summary`` for the month (counted usage, exact decimal
  strings; null for a meter without usage); an unknown account gets nulls and is not
  woken until its first event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import msgspec
import structlog
import trio
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

import supervisors as sv
from meterd.billing import Period
from meterd.config import ApiConfig
from meterd.model import canonical_quantity
from meterd.store import CommitFailed

from .daemon import Daemon
from .support import summarise

__all__ = [
    "AUTH_TIMEOUT",
    "LIVE_INTERVAL",
    "LiveUsage",
    "authorise",
    "follow",
    "live_usage",
    "serve_live",
]

log = structlog.get_logger("meterd.api")

LIVE_INTERVAL: Final = 0.5  # seconds: at most two messages a second per connection
AUTH_TIMEOUT: Final = 10.0  # seconds to send the auth message when no header carried it
_SMALL: Final = 2_000  # cells summed on the loop; more go to a worker thread


class LiveUsage(msgspec.Struct, kw_only=True):
    type: str = "usage"
    account: str
    period: str
    from_: int = msgspec.field(name="from")
    to: int
    at: int
    meters: dict[str, str | None]

    @classmethod
    def of(
        cls, account: str, period: Period, at: int, meters: dict[str, str | None]
    ) -> LiveUsage:
        """The month ``period``'s ``meters`` totals of ``account`` as read at ``at``."""
        return cls(
            account=account,
            period=str(period),
            from_=period.start_ms,
            to=period.end_ms,
            at=at,
            meters=meters,
        )


_encode = msgspec.json.Encoder().encode


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _who(config: ApiConfig, token: str, account: str) -> str | None:
    """``admin`` or ``account`` for a token that opens ``account``, None otherwise."""
    if config.is_admin_token(token):
        return "admin"
    if config.is_account_token(token, account):
        return "account"
    return None


def _bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _refuse(websocket: WebSocket, message: str) -> None:
    """Refuse at the handshake: a 401 JSON answer where the server can send one, else a
    close (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = msgspec.json.encode({"error": {"code": "unauthorized", "message": message}})
        await websocket.send_denial_response(Response(body, 401, None, "application/json"))
    else:
        await websocket.close(code=1008)


async def _first_message_auth(websocket: WebSocket, config: ApiConfig, account: str) -> str | None:
    """The token of the first message, checked; None (after telling the client) if wrong."""
    text = None
    with trio.move_on_after(AUTH_TIMEOUT):
        try:
            text = await websocket.receive_text()
        except (WebSocketDisconnect, KeyError, RuntimeError):
            return None
    why = f'send {{"type": "auth", "token": "..."}} first (within {AUTH_TIMEOUT:g} s)'
    who = None
    if text is not None:
        try:
            first = json.loads(text)
        except ValueError:
            first = None
        if isinstance(first, dict) and first.get("type") == "auth":
            token = first.get("token")
            if isinstance(token, str):
                who = _who(config, token, account)
                why = f"the token does not open account {account!r}"
    if who is None:
        error = {"type": "error", "code": "unauthorized", "message": why}
        try:
            await websocket.send_text(json.dumps(error))
            await websocket.close(code=1008)
        except (WebSocketDisconnect, RuntimeError):
            pass
    return who


async def _snapshot(daemon: Daemon, account: str) -> LiveUsage:
    now = _wall_ms()
    period = Period.containing(now)
    accounts = daemon.accounts
    known = account in accounts.registry or await daemon.store.reader.has_account(account)
    values: dict[str, str | None] = {}
    for meter in accounts.meters.values():
        total = None
        if known:
            cells = await accounts.states(account, meter, period.start_ms, period.end_ms)
            if len(cells) < _SMALL:
                _, total = summarise(meter, cells, "month")
            else:
                _, total = await trio.to_thread.run_sync(summarise, meter, cells, "month")
        values[meter.name] = None if total is None else canonical_quantity(total)
    return LiveUsage.of(account, period, now, values)


async def follow(
    snapshot: Callable[[], Awaitable[LiveUsage]],
    next_change: Callable[[], trio.Event],
    send: Callable[[LiveUsage], Awaitable[None]],
    *,
    interval: float = LIVE_INTERVAL,
) -> None:
    """Send the usage now, then after each change, at most once per ``interval`` (Trio
    time): the first change after a quiet spell goes out at once, those that come sooner
    wait for the interval's end and go out together, as the latest values. A value that
    did not change is not sent again; the month's end is a change."""
    last: tuple[str, dict[str, str | None]] | None = None
    sent_at = -math.inf
    while True:
        changed = next_change()  # before reading: no change is missed
        found = await snapshot()
        if last != (found.period, found.meters):
            await send(found)
            last = (found.period, found.meters)
            sent_at = trio.current_time()
        with trio.move_on_after(max(0.0, (found.to - _wall_ms()) / 1000)):
            await changed.wait()  # or the month ends
        await trio.sleep_until(sent_at + interval)


async def _drain(websocket: WebSocket, done: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends, until it goes."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    done.cancel()


async def authorise(websocket: WebSocket, config: ApiConfig, account: str) -> str | None:
    """Check the token (handshake header, else the first message) and accept: ``admin`` or
    ``account``; None when refused (the client was told, see the module doc)."""
    header = websocket.headers.get("authorization")
    if header is not None:
        token = _bearer(header)
        who = None if token is None else _who(config, token, account)
        if who is None:
            await _refuse(websocket, f"the token does not open account {account!r}")
            return None
        await websocket.accept()
        return who
    await websocket.accept()
    return await _first_message_auth(websocket, config, account)


async def serve_live(
    websocket: WebSocket,
    account: str,
    who: str,
    snapshot: Callable[[], Awaitable[LiveUsage]],
    next_change: Callable[[], trio.Event],
    unavailable: tuple[type[Exception], ...],
) -> None:
    """Stream ``account``'s usage on an accepted ``websocket`` (:func:`follow`) until the
    client goes; an error of ``unavailable`` (the usage cannot be read now) is told to the
    client and closes 1011."""
    log.info("live_usage_opened", account=account, token=who)

    async def send(found: LiveUsage) -> None:
        await websocket.send_text(_encode(found).decode())

    failed: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, websocket, nursery.cancel_scope)
        try:
            await follow(snapshot, next_change, send)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went
        except unavailable as error:
            failed = error
        nursery.cancel_scope.cancel()
    if failed is not None:
        log.warning("live_usage_failed", account=account, error=type(failed).__name__)
        message = {
            "type": "error",
            "code": "unavailable",
            "message": f"the account's usage cannot be read now ({type(failed).__name__});"
            " reconnect shortly",
        }
        try:
            await websocket.send_text(json.dumps(message))
            await websocket.close(code=1011)
        except (WebSocketDisconnect, RuntimeError):
            pass
    log.info("live_usage_closed", account=account)


async def live_usage(websocket: WebSocket) -> None:
    """The websocket route (see the module doc)."""
    daemon: Daemon = websocket.app.state.daemon
    account = websocket.path_params["account"]
    who = await authorise(websocket, daemon.config.api, account)
    if who is None:
        return
    await serve_live(
        websocket,
        account,
        who,
        partial(_snapshot, daemon, account),
        partial(daemon.accounts.next_change, account),
        (CommitFailed, sv.CallTimeout, sv.NoSuchActor, sv.ActorExited),
    )
