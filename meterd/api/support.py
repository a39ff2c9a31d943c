"""Billing support's discovery route: ``GET /v1/accounts``, the accounts the store knows.

Declared like every route (:mod:`.operations`): the admin token, then the query
(:class:`.models.AccountsQuery`), then the answer (:class:`.answers.AccountList`). The page
is read from the store's ``accounts`` table on a reader thread, by id from the cursor on;
``awake`` says whether the account's meter actor runs now (the registry, no wake-up).
"""

from __future__ import annotations

from starlette.responses import Response

from . import answers
from .answers import json_answer
from .daemon import Daemon
from .models import AccountsQuery
from .operations import Operations

ops = Operations()


@ops.get(
    "/v1/accounts",
    "accounts",
    "The accounts the store has seen, by id, paged; search keeps those whose id contains"
    " the text.",
    answers={200: (answers.AccountList, "One page of accounts.")},
    errors=(400, 401, 500),
)
async def accounts(daemon: Daemon, query: AccountsQuery) -> Response:
    found, more = await daemon.store.reader.account_page(query.search, query.after, query.limit)
    registry = daemon.accounts.registry
    return json_answer(
        answers.AccountList(
            accounts=[
                answers.AccountEntry(account=account, awake=account in registry, updated_at=at)
                for account, at in found
            ],
            next_after=more,
        )
    )


__all__ = ["ops"]
