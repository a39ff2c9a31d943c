"""GraphQL over billing: a real Billing on a real store, queries executed the way the HTTP
endpoint runs them (graphql-core on a worker thread, resolvers back on Trio)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from meterd.billing import BillingGraphQL
from meterd.billing._service import GRAPHQL_THREADS
from meterd.model import HOUR_MS, MAX_MS, Event
from tests.test_accounts import submit
from tests.test_billing import DAY, NOV, PEAK, adjust, billing, dyno, ingest

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
          adjustments { id kind quantity by reason dimensions { name value } }
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
