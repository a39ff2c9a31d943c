"""Releasing and discarding quarantined events (docs/accounts.md, "Quarantine: release and
discard"; docs/api.md).

* ``POST /v1/quarantine/{account}/release`` — re-apply the account's quarantined events
  (``ids``, or all): the store writer moves them back to the journal as a new batch, with a
  ``quarantine_log`` row naming ``by`` and ``reason``, and the account's actor applies it.
* ``POST /v1/quarantine/{account}/discard`` — set them aside for good (``ids`` required),
  audited the same way: they never count.

Both answer 200 with what was done (:class:`.answers.QuarantineDecision`) and count the
events they settled in ``/metrics`` (``meterd_quarantine_released_total``,
``meterd_quarantine_discarded_total``); ids already
released (a release) or discarded (a discard) are listed as ``unchanged``: asking twice is
a no-op. A request naming an id that cannot be acted on writes nothing: 404
``unknown_event`` (no such event of the account), 409 ``not_quarantined`` (it counts),
``discarded`` (cannot be released), ``already_released`` (cannot be discarded: void it), the
message naming each id and why.
"""

from __future__ import annotations

from typing import Any, Final, cast

from msgspec import UnsetType
from starlette.responses import Response

from meterd.store import QuarantineDecision, QuarantineRefused

from . import answers
from .answers import json_answer
from .daemon import Daemon
from .errors import ApiError
from .models import AccountPath, DiscardBody, ReleaseBody
from .operations import ACCOUNT, Operations

ops = Operations()

_ERRORS: Final = (400, 401, 404, 409, 413, 500, 503)


@ops.post(
    "/v1/quarantine/{account}/release",
    "releaseQuarantine",
    "Re-apply quarantined events of the account (ids, or all) once their cause is fixed:"
    " appended to the journal again and applied by its actor; audited with by and reason.",
    answers={200: (answers.QuarantineDecision, "Done; ids released before are unchanged.")},
    errors=_ERRORS,
    scope=ACCOUNT,
)
async def release(daemon: Daemon, path: AccountPath, body: ReleaseBody) -> Response:
    await daemon.known_account(path.account)
    ids = None if isinstance(body.ids, UnsetType) else body.ids
    try:
        decision = await daemon.accounts.release(path.account, ids, body.by, body.reason)
    except QuarantineRefused as refused:
        raise _refusal(refused) from None
    daemon.metrics.quarantine.released += len(decision.settled)
    return json_answer(_answer(decision, body.by, body.reason))


@ops.post(
    "/v1/quarantine/{account}/discard",
    "discardQuarantine",
    "Set quarantined events of the account aside for good: they never count; audited with"
    " by and reason.",
    answers={200: (answers.QuarantineDecision, "Done; ids discarded before are unchanged.")},
    errors=_ERRORS,
    scope=ACCOUNT,
)
async def discard(daemon: Daemon, path: AccountPath, body: DiscardBody) -> Response:
    await daemon.known_account(path.account)
    try:
        decision = await daemon.accounts.discard(path.account, body.ids, body.by, body.reason)
    except QuarantineRefused as refused:
        raise _refusal(refused) from None
    daemon.metrics.quarantine.discarded += len(decision.settled)
    return json_answer(_answer(decision, body.by, body.reason))


def _refusal(refused: QuarantineRefused) -> ApiError:
    """404 when every id is unknown, else 409; the first problem's code, every id's why."""
    codes = [code for _, code, _ in refused.problems]
    status = 404 if all(code == "unknown_event" for code in codes) else 409
    first = next(code for code in codes if status == 404 or code != "unknown_event")
    return ApiError(status, first, f"nothing was written: {refused}", parameter="ids")


def _answer(decision: QuarantineDecision, by: str, reason: str) -> answers.QuarantineDecision:
    return answers.QuarantineDecision(
        account=decision.account,
        action=cast(Any, decision.action),
        batch_id=decision.batch_id,
        events=[
            answers.SettledEvent(
                event_id=copy.event_id,
                batch_id=copy.batch_id,
                error=copy.error,
                quarantined_at=copy.quarantined_at,
            )
            for copy in decision.settled
        ],
        unchanged=[
            answers.UnchangedEvent(
                event_id=same.event_id,
                action=cast(Any, same.action),
                by=same.by,
                at=same.at,
                release_batch=same.release_batch,
            )
            for same in decision.unchanged
        ],
        by=by,
        reason=reason,
    )
