"""GraphQL over billing: a real Billing on a real store, queries executed the way the HTTP
endpoint runs them (graphql-core on a worker thread, resolvers back on Trio)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio

from meterd.billing import BillingGraphQL
from meterd.billing._graphql import (
    COSTS,
    MAX_COST,
    MAX_DEPTH,
    MAX_IN_PROGRESS,
    MAX_QUERY_CHARS,
    MAX_QUERY_TOKENS,
)
from meterd.billing._service import GRAPHQL_THREADS
from meterd.model import HOUR_MS, MAX_MS, Event
from tests.accounts.test_accounts import submit
from tests.billing.test_billing import DAY, NOV, PEAK, adjust, billing, dyno, ingest

INVOICE = """
query($account: String!, $period: String!) {
  account(id: $account) {
    invoice(period: $period) {
      status total currency
      lines {
        number meter quantity unitPrice amount adjustments
        dimensions { name value }
        explanation(limit: 1) {
          value nextCursor notes
          windows { start value }
          events { id quantity status window properties { name value } }
          adjustments { id kind quantity by reason idempotencyKey dimensions { name value } }
          audit { kind id code message time window batchId seq producer receivedAt
                  properties { name value } }
          auditNextCursor
        }
      }
    }
  }
}
"""


async def run(b: Any, query: str, **variables: Any) -> tuple[int, dict[str, Any]]:
    return await BillingGraphQL(b).execute({"query": query, "variables": variables})


async def test_account_invoice_lines_and_their_explanation(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("b", "20.5", 3))
        await submit(b.accounts, [("acme", [dyno("a", "100", 1), dyno("b", "1", 3)])])
        credit, _ = await adjust(b, 1, "0.5", "alice", "goodwill")
        status, result = await run(b, INVOICE, account="acme", period=str(NOV))
        assert status == 200, result
        assert "errors" not in result
        invoice = result["data"]["account"]["invoice"]
        assert (invoice["status"], invoice["total"], invoice["currency"]) == ("open", "1.20", "USD")
        [line] = invoice["lines"]
        assert (line["quantity"], line["unitPrice"], line["amount"]) == ("120", "0.01", "1.20")
        assert line["dimensions"] == [{"name": "size", "value": "std"}]
        explanation = line["explanation"]
        assert explanation["value"] == "120"
        assert [e["id"] for e in explanation["events"]] == ["a"]  # one per page (limit 1)
        assert explanation["nextCursor"] is not None
        assert explanation["events"][0]["window"] == DAY[1]  # a Millis beyond 32 bits
        assert explanation["windows"] == [
            {"start": DAY[1], "value": "100"},
            {"start": DAY[3], "value": "20.5"},
        ]
        # The re-sent "a" and the conflicting "b", one per page, in their windows.
        [duplicate] = explanation["audit"]
        assert (duplicate["kind"], duplicate["id"], duplicate["window"]) == (
            "duplicate",
            "a",
            DAY[1],
        )
        assert duplicate["properties"] == [{"name": "size", "value": "std"}]
        assert (duplicate["code"], duplicate["batchId"]) == (None, 1)
        assert explanation["auditNextCursor"] is not None
        status, page = await run(
            b,
            """query($cursor: String) { account(id: "acme") { invoice(period: "2026-11") {
                 lines { explanation(limit: 1, auditCursor: $cursor) {
                   audit { kind id code window } auditNextCursor } } } } }""",
            cursor=explanation["auditNextCursor"],
        )
        assert status == 200, page
        [line_two] = page["data"]["account"]["invoice"]["lines"]
        assert line_two["explanation"] == {
            "audit": [{"kind": "rejected", "id": "b", "code": "id_conflict", "window": DAY[3]}],
            "auditNextCursor": None,
        }
        [adj] = explanation["adjustments"]
        assert (adj["id"], adj["kind"], adj["quantity"], adj["by"]) == (
            credit.id,
            "credit",
            "0.5",
            "alice",
        )
        assert credit.key  # every correction has one (made by the server when not given)
        assert adj["idempotencyKey"] == credit.key


async def test_usage_and_usage_explanation(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, Event("p1", "acme", PEAK.name, 500, DAY[2]))
        await ingest(b.accounts, Event("p2", "acme", PEAK.name, 9000, DAY[2] + 1))
        await b.void_event("acme", "p2", "ops", "bad reading")
        query = """
        query($from: Millis!, $to: Millis!, $start: Millis!) {
          account(id: "acme") {
            usage(meter: "postgres.storage_bytes", from: $from, to: $to, window: DAY) {
              start end value group { name value }
            }
            usageExplanation(meter: "postgres.storage_bytes", start: $start, window: DAY) {
              value events { id status void } voids { eventId by reason }
            }
          }
        }"""
        status, result = await run(b, query, **{"from": DAY[0], "to": DAY[5], "start": DAY[2]})
        assert status == 200, result
        account = result["data"]["account"]
        assert account["usage"] == [{"start": DAY[2], "end": DAY[3], "value": "500", "group": None}]
        explained = account["usageExplanation"]
        assert explained["value"] == "500"
        assert [(e["id"], e["status"]) for e in explained["events"]] == [
            ("p1", "counted"),
            ("p2", "voided"),
        ]
        assert explained["voids"] == [{"eventId": "p2", "by": "ops", "reason": "bad reading"}]
        assert DAY[2] - DAY[2] % HOUR_MS == DAY[2]


async def test_errors_carry_a_code_and_name_the_field(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        status, result = await run(
            b, '{ account(id: "acme") { invoice(period: "2026-13") { total } } }'
        )
        assert status == 200
        [error] = result["errors"]
        assert error["extensions"]["code"] == "invalid_parameter"
        assert error["message"].startswith("period:")
        status, result = await run(
            b, '{ account(id: "acme") { usage(meter: "nope", from: 0, to: 1) { value } } }'
        )
        assert result["errors"][0]["extensions"]["code"] == "unknown_meter"
        status, result = await run(b, '{ account(id: "nobody") { id } }')
        assert result["errors"][0]["extensions"]["code"] == "unknown_account"
        status, result = await run(b, "{ account { id } }")  # invalid query: the request fails
        assert status == 400
        assert "id" in result["errors"][0]["message"]


async def test_more_queries_than_threads_all_complete(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        answers: list[tuple[int, dict[str, Any]]] = []

        async def one() -> None:
            answers.append(await run(b, INVOICE, account="acme", period=str(NOV)))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(3 * GRAPHQL_THREADS):
                    nursery.start_soon(one)
        assert len(answers) == 12
        assert {a[1]["data"]["account"]["invoice"]["total"] for a in answers} == {"1.00"}


async def test_millis_arguments_are_range_checked_like_rest(tmp_path: Path) -> None:
    usage = 'account(id: "acme") {{ usage(meter: "dyno.seconds", from: {}, to: {}) {{ value }} }}'
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        for bad in (-1, MAX_MS + 1, 2**63):
            # a literal: the query does not validate
            status, result = await run(b, "{ " + usage.format(bad, 1) + " }")
            assert status == 400
            [error] = result["errors"]
            assert (
                f"between 0 and {MAX_MS} (9999-12-31T23:59:59.999Z), got {bad}" in error["message"]
            )
            assert error["extensions"]["code"] == "invalid_parameter"
            # a variable: named in the error
            query = "query($from: Millis!) { " + usage.format("$from", 1) + " }"
            status, result = await run(b, query, **{"from": bad})
            assert result["data"] is None  # not executed (HTTP 200 as for any variable error)
            [error] = result["errors"]
            assert "$from" in error["message"]
            assert (
                f"between 0 and {MAX_MS} (9999-12-31T23:59:59.999Z), got {bad}" in error["message"]
            )
            assert error["extensions"]["code"] == "invalid_parameter"
        status, result = await run(b, "{ " + usage.format(0, MAX_MS) + " }")
        assert (status, "errors" in result) == (200, False)


# ---- limits: what a query may cost, how deep and long it may be, how many run at once ------


def aliases(count: int, field: str) -> str:
    return '{ account(id: "acme") { ' + " ".join(f"a{i}: {field}" for i in range(count)) + " } }"


async def test_a_query_costing_more_than_the_limit_is_refused_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        ratings = 0
        invoice = b.invoice

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal ratings
            ratings += 1
            return await invoice(*args, **kwargs)

        monkeypatch.setattr(b, "invoice", counted)
        status, result = await run(b, aliases(50, 'invoice(period: "2026-11") { total }'))
        assert status == 400, result
        [error] = result["errors"]
        assert error["extensions"]["code"] == "query_too_costly"
        assert error["extensions"]["cost"] == {
            "requestedQueryCost": 50 * COSTS["Account"]["invoice"]["complexity"] + 1,
            "maximumAvailable": MAX_COST,
        }
        assert f"more than the {MAX_COST}" in error["message"]
        assert "data" not in result
        assert ratings == 0  # nothing was rated
        # a page limit multiplies: 1000 events per page of each line is too many
        status, result = await run(
            b,
            '{ account(id: "acme") { invoice(period: "2026-11") { lines {'
            " explanation(limit: $limit) { value } } } } }".replace("$limit", "1000"),
        )
        assert (status, result["errors"][0]["extensions"]["code"]) == (400, "query_too_costly")
        # ... also when it comes in a variable
        status, result = await run(
            b,
            'query($limit: Int!) { account(id: "acme") { invoice(period: "2026-11") { lines {'
            " explanation(limit: $limit) { value } } } } }",
            limit=1000,
        )
        assert (status, result["errors"][0]["extensions"]["code"]) == (400, "query_too_costly")
        assert ratings == 0
        # the invoice query of these tests (lines explained) is well within the limit
        status, result = await run(b, INVOICE, account="acme", period=str(NOV))
        assert (status, "errors" in result) == (200, False)
        assert ratings == 1


async def test_a_query_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        deep = "id"
        for _ in range(MAX_DEPTH + 5):
            deep = f"account {{ {deep} }}"
        status, result = await run(b, "{ " + deep + " }")
        assert status == 400
        codes = [e["extensions"]["code"] for e in result["errors"]]
        assert "query_too_deep" in codes, result
        # through named fragments too
        fragments = " ".join(
            f"fragment F{i} on Account {{ account {{ ...F{i + 1} }} }}" for i in range(MAX_DEPTH)
        )
        query = '{ account(id: "acme") { ...F0 } } ' + fragments + f" fragment F{MAX_DEPTH}"
        status, result = await run(b, query + " on Account { id }")
        assert status == 400
        assert "query_too_deep" in [e["extensions"]["code"] for e in result["errors"]], result
        # the deepest path the schema has is allowed
        status, result = await run(
            b,
            '{ account(id: "acme") { invoice(period: "2026-11") { restatements { changes {'
            " old { explanation { audit { properties { name } } } } } } } } }",
        )
        assert (status, "errors" in result) == (200, False), result


async def test_a_query_longer_than_the_token_limit_is_refused_while_parsing(
    tmp_path: Path,
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        directives = "@include(if:true)" * 1000  # 17,000 characters, 7,000 tokens
        status, result = await run(b, '{ account(id: "acme") { id ' + directives + " } }")
        assert status == 400
        [error] = result["errors"]
        assert error["extensions"]["code"] == "query_too_large"
        assert f"more than {MAX_QUERY_TOKENS} tokens" in error["message"]
        directives = " ".join(["@include(if: true)"] * 20_000)  # 8.4 s to fail validation
        status, result = await run(b, '{ account(id: "acme") { id ' + directives + " } }")
        [error] = result["errors"]
        assert (status, error["extensions"]["code"]) == (400, "query_too_large")
        assert f"more than {MAX_QUERY_CHARS} code points" in error["message"]
        comments = "\n".join(["# a comment"] * 1000)
        status, result = await run(b, '{ account(id: "acme") { id } }\n' + comments)
        assert (status, result["errors"][0]["extensions"]["code"]) == (400, "query_too_large")
        status, result = await run(b, '{ account(id: "' + "x" * 100_000 + '") { id } }')
        assert (status, result["errors"][0]["extensions"]["code"]) == (400, "query_too_large")
        status, result = await run(b, "{ account(id: ")  # a plain syntax error
        assert (status, result["errors"][0]["extensions"]["code"]) == (400, "invalid_query")


async def test_queries_past_the_concurrency_bound_are_refused_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        release = trio.Event()
        threads_busy = trio.Event()
        entered = 0
        invoice = b.invoice

        async def held(*args: Any, **kwargs: Any) -> Any:
            nonlocal entered
            entered += 1
            if entered == GRAPHQL_THREADS:
                threads_busy.set()
            await release.wait()
            return await invoice(*args, **kwargs)

        monkeypatch.setattr(b, "invoice", held)
        endpoint = BillingGraphQL(b)  # one per daemon, as the API mounts it
        query = {"query": '{ account(id: "acme") { invoice(period: "2026-11") { total } } }'}
        answers: list[int] = []

        async def one() -> None:
            status, _result = await endpoint.execute(query)
            answers.append(status)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_IN_PROGRESS):
                    nursery.start_soon(one)
                await threads_busy.wait()  # the others wait for a thread
                status, result = await endpoint.execute(query)
                assert status == 429
                [error] = result["errors"]
                assert error["extensions"]["code"] == "busy"
                assert f"{MAX_IN_PROGRESS} GraphQL queries" in error["message"]
                release.set()
        assert answers == [200] * MAX_IN_PROGRESS
        assert (await endpoint.execute(query))[0] == 200  # admitted again once they ended


async def test_client_errors_are_logged_at_info_without_the_query(tmp_path: Path) -> None:
    marker = "zzmarkerzz" * 50
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        with structlog.testing.capture_logs() as logged:
            await run(b, "{ account(id: " + marker)  # a syntax error
            await run(b, '{ account(id: "acme") { ' + marker + " } }")  # a validation error
            await run(b, '{ account(id: "nobody") { id } }')  # a billing error: unknown account
            await run(b, aliases(50, 'invoice(period: "2026-11") { total }'))
        events = [e for e in logged if e["event"].startswith("graphql")]
        assert [e["log_level"] for e in events] == ["info"] * 4, events
        assert [e["code"] for e in events] == [
            "invalid_query",
            "invalid_query",
            "unknown_account",
            "query_too_costly",
        ]
        for event in events:
            assert all(len(str(value)) <= 300 for value in event.values()), event
            assert marker not in str(event)
