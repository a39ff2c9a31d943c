"""Billing support over real HTTP against a daemon subprocess: invoices, corrections,
closing and restatements, explanations, GraphQL beside REST, and ``meterd explain``.

Events go in through the producer protocol. They are dated on the last day of the previous
month (always inside the default 35-day late window, and a month that is over, so it can be
closed); each test uses its own accounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
import schemathesis
from trio_websocket import open_websocket

from meterd.api.openapi import openapi_document
from meterd.billing import Period
from meterd.model import DAY_MS, MINUTE_MS
from tests.api.test_api import api, assert_error, ingest
from tests.ingest.test_server import Client, auth
from tests.procs.daemon import DaemonProcess, running_daemon

__all__ = ["api"]  # a fixture, used by name (with this module's daemon)

NOW = time.time_ns() // 1_000_000
THIS = Period.containing(NOW)
LAST = Period.containing(THIS.start_ms - 1)  # over, so it can be closed
DAY = LAST.end_ms - DAY_MS  # its last day, 00:00 UTC
# the shipped price book prices dyno.seconds at 0.0000104 (size performance-l apart)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("billing")) as process:
        yield process


def dyno(account: str, id: str, seconds: str, minute: int = 0, size: str = "std-1x") -> Any:
    return {
        "id": id,
        "account": account,
        "meter": "dyno.seconds",
        "quantity": seconds,
        "time": DAY + minute * MINUTE_MS,
        "properties": {"size": size, "app": "web"},
    }


SCHEMA = schemathesis.openapi.from_dict(openapi_document())


def ok(response: httpx.Response, operation: str, status: int = 200) -> Any:
    """The answer's JSON, held to the OpenAPI document's answer for ``operation``."""
    assert response.status_code == status, response.text
    SCHEMA.find_operation_by_id(operation).validate_response(response)
    return response.json()


async def test_invoice_adjust_void_and_explain(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(
        daemon,
        [dyno("b-acme", "a", "1000"), dyno("b-acme", "b", "500", 1), dyno("b-acme", "c", "7", 2)],
    )
    invoice = f"/v1/accounts/b-acme/invoices/{LAST}"
    body = ok(await api.get(invoice), "invoice")
    assert body["status"] == "open"
    [line] = body["lines"]
    assert (line["quantity"], line["unit_price"]) == ("1507", "0.0000104")
    assert body["total"] == "0.02"  # 1507 x 0.0000104 = 0.0156728, to the cent half-even

    adjusted = ok(
        await api.post(
            "/v1/accounts/b-acme/adjustments",
            json={
                "meter": "dyno.seconds",
                "start": DAY,
                "dimensions": {"size": "std-1x", "app": "web"},
                "kind": "credit",
                "quantity": "500",
                "by": "alice",
                "reason": "outage",
            },
        ),
        "adjust",
        201,
    )
    assert adjusted["restatement"] is None  # the month is not closed
    assert adjusted["adjustment"]["dimensions"] == {"size": "std-1x", "app": "web"}
    voided = ok(
        await api.post("/v1/accounts/b-acme/events/c/void", json={"by": "bob", "reason": "test"}),
        "voidEvent",
        201,
    )
    assert voided["void"]["quantity"] == "7"
    assert_error(
        await api.post("/v1/accounts/b-acme/events/c/void", json={"by": "b", "reason": "r"}),
        409,
        "already_void",
    )
    assert_error(
        await api.post("/v1/accounts/b-acme/events/zz/void", json={"by": "b", "reason": "r"}),
        404,
        "unknown_event",
    )
    [line] = ok(await api.get(invoice), "invoice")["lines"]
    assert (line["usage"], line["adjusted"], line["quantity"]) == ("1500", "-500", "1000")

    explained = ok(
        await api.get(f"{invoice}/lines/1/explanation", params={"limit": 2}), "explainLine"
    )
    assert [(e["id"], e["status"]) for e in explained["events"]] == [
        ("a", "counted"),
        ("b", "counted"),
    ]
    rest = ok(
        await api.get(
            f"{invoice}/lines/1/explanation", params={"cursor": explained["next_cursor"]}
        ),
        "explainLine",
    )
    assert [(e["id"], e["status"]) for e in rest["events"]] == [("c", "voided")]
    assert rest["next_cursor"] is None
    assert [a["by"] for a in explained["adjustments"]] == ["alice"]

    billed = ok(
        await api.get(
            "/v1/accounts/b-acme/usage/billed",
            params={"meter": "dyno.seconds", "from": DAY, "to": DAY + DAY_MS, "window": "day"},
        ),
        "billedUsage",
    )
    assert billed["rows"] == [{"start": DAY, "end": DAY + DAY_MS, "value": "1000"}]
    figure = ok(
        await api.get(
            "/v1/accounts/b-acme/usage/explanation",
            params={
                "meter": "dyno.seconds",
                "start": DAY,
                "window": "day",
                "group_by": "size",
                "group": "std-1x",
            },
        ),
        "explainUsage",
    )
    assert figure["value"] == "1000"
    assert [w["value"] for w in figure["windows"]] == ["1500"]  # hours, voids applied

    assert_error(await api.get(f"{invoice}/lines/2/explanation"), 404, "unknown_line")
    error = assert_error(
        await api.get("/v1/accounts/b-acme/invoices/2026-13"), 400, "invalid_parameter"
    )
    assert error["parameter"] == "period"
    assert_error(await api.get(f"/v1/accounts/nobody/invoices/{LAST}"), 404, "unknown_account")
    error = assert_error(
        await api.post("/v1/accounts/b-acme/adjustments", json={"meter": "dyno.seconds"}),
        400,
        "invalid_parameter",
    )
    assert error["parameter"] == "by"  # the first missing field, by name


async def test_closing_and_restatements(daemon: DaemonProcess, api: httpx.AsyncClient) -> None:
    await ingest(daemon, [dyno("b-close", "a", "100000")])
    assert_error(
        await api.post(f"/v1/periods/{THIS}/close", json={"by": "ops"}), 409, "period_not_over"
    )
    closed = ok(await api.post(f"/v1/periods/{LAST}/close", json={"by": "ops"}), "closePeriod")
    assert closed["period"] == str(LAST)
    assert closed["accounts"] >= 1
    assert_error(
        await api.post(f"/v1/periods/{LAST}/close", json={"by": "ops"}), 409, "already_closed"
    )
    invoice = f"/v1/accounts/b-close/invoices/{LAST}"
    body = ok(await api.get(invoice), "invoice")
    assert (body["status"], body["total"], body["closed"]["total"]) == ("closed", "1.04", "1.04")
    assert body["restatements"] == []
    await ingest(daemon, [dyno("b-close", "late", "50000", 5)])  # late, for the closed month
    body = ok(await api.get(invoice), "invoice")
    assert (body["total"], body["closed"]["total"]) == ("1.56", "1.04")
    [restatement] = body["restatements"]
    assert (restatement["old_total"], restatement["new_total"], restatement["difference"]) == (
        "1.04",
        "1.56",
        "0.52",
    )
    assert restatement["changes"][0]["old"]["quantity"] == "100000"
    assert restatement["changes"][0]["new"]["quantity"] == "150000"
    listed = ok(await api.get(f"{invoice}/restatements"), "restatements")
    assert listed["restatements"] == [restatement]


GRAPHQL = """
query($account: String!, $period: String!) {
  account(id: $account) {
    invoice(period: $period) {
      total
      lines { number quantity amount explanation(limit: 5) { events { id status } } }
    }
  }
}"""


async def test_text_the_schema_refuses_but_python_patterns_take_is_still_400(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    """msgspec checks a pattern with Python's ``re``, whose ``$`` also matches before a final
    newline (JSON Schema's does not): the parsers behind the patterns still refuse it."""
    await ingest(daemon, [dyno("b-newline", "n1", "1")])
    for path, params, name in [
        (f"/v1/accounts/b-newline/invoices/{LAST}%0A", {}, "period"),
        ("/v1/accounts/b-newline/events", {"cursor": "1.0\n"}, "cursor"),
        (
            f"/v1/accounts/b-newline/invoices/{LAST}/lines/1/explanation",
            {"audit_cursor": "1.0\n"},
            "audit_cursor",
        ),
    ]:
        error = assert_error(await api.get(path, params=params), 400, "invalid_parameter")
        assert error["parameter"] == name, error
    adjustment = {
        "meter": "dyno.seconds",
        "start": DAY,
        "kind": "credit",
        "quantity": "1\n",
        "by": "tests",
        "reason": "newline",
    }
    response = await api.post("/v1/accounts/b-newline/adjustments", json=adjustment)
    assert assert_error(response, 400, "invalid_parameter")["parameter"] == "quantity"


async def test_graphql_over_http(daemon: DaemonProcess, api: httpx.AsyncClient) -> None:
    await ingest(daemon, [dyno("b-gql", "g1", "100000"), dyno("b-gql", "g2", "200000", 3)])
    answer = ok(
        await api.post(
            "/v1/graphql",
            json={"query": GRAPHQL, "variables": {"account": "b-gql", "period": str(LAST)}},
        ),
        "graphql",
    )
    assert "errors" not in answer, answer
    invoice = answer["data"]["account"]["invoice"]
    [line] = invoice["lines"]
    assert (line["quantity"], line["amount"]) == ("300000", "3.12")  # x 0.0000104
    assert line["explanation"]["events"] == [
        {"id": "g1", "status": "counted"},
        {"id": "g2", "status": "counted"},
    ]
    refused = await httpx.AsyncClient(base_url=daemon.api_url).post(
        "/v1/graphql", json={"query": "{ __typename }"}
    )
    assert_error(refused, 401, "unauthorized")
    bad = await api.post("/v1/graphql", json={"query": "{ nope }"})
    assert bad.status_code == 400
    assert "nope" in bad.json()["errors"][0]["message"]


def test_meterd_explain_prints_the_invoice_and_a_line(daemon: DaemonProcess) -> None:
    import trio

    trio.run(ingest, daemon, [dyno("b-cli", "e1", "3600"), dyno("b-cli", "e2", "60", 9)])
    trio.run(ingest, daemon, [dyno("b-cli", "e1", "3600"), dyno("b-cli", "e2", "60", 9)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
    env |= {"METERD_URL": daemon.api_url, "METERD_TOKEN": daemon.config.api.admin_token}

    def meterd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterd", "explain", "b-cli", "--period", str(LAST), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    whole = meterd()
    assert whole.returncode == 0, whole.stderr
    out = whole.stdout.splitlines()
    assert out[0].startswith(f"b-cli: invoice {LAST} (")  # open, or closed by another test
    assert "  total 0.04 USD" in out  # 3660 x 0.0000104 = 0.038064
    assert any(ln.startswith("  1. dyno.seconds ") for ln in out)  # the line in words
    one = meterd("--line", "1", "--limit", "1")
    assert one.returncode == 0, one.stderr
    assert any(" e1 " in ln and "counted" in ln for ln in one.stdout.splitlines())
    assert "--cursor" in one.stderr  # the command for the next page
    # The re-sent copies: one duplicate per page, and the command for the next one.
    duplicates = [ln for ln in one.stdout.splitlines() if "duplicate (counted in batch" in ln]
    [duplicate] = duplicates
    assert " e1 " in duplicate, one.stdout
    [audit_next] = [ln for ln in one.stderr.splitlines() if "--audit-cursor" in ln]
    cursor = audit_next.rsplit("--audit-cursor ", 1)[1].strip("'")
    two = meterd("--line", "1", "--limit", "1", "--audit-cursor", cursor)
    assert two.returncode == 0, two.stderr
    assert any(" e2 " in ln and "duplicate" in ln for ln in two.stdout.splitlines()), two.stdout
    missing = meterd("--line", "9")
    assert missing.returncode == 1
    assert "has no line 9" in missing.stderr
    as_json = meterd("--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["invoice"]["total"] == "0.04"
    [explained] = document["explanations"]
    assert [e["id"] for e in explained["events"]] == ["e1", "e2"]


async def test_duplicates_and_rejections_sent_over_the_protocol_show_in_explanations(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    account = "b-audit"
    listen = daemon.config.ingest.listen
    async with open_websocket(
        listen.host,
        listen.port,
        "/v1/ingest",
        use_ssl=False,
        extra_headers=auth(daemon.token("platform")),
    ) as ws:
        producer = Client(ws, msgpack.unpackb(await ws.get_message(), raw=False))
        await producer.batch(0, [dyno(account, "a", "100"), dyno(account, "b", "5", 1)])
        assert (await producer.ack(0))["accepted"] == 2
        # A reconnect's re-send of "a", "b" changed (id_conflict), an invalid quantity, and
        # an event naming no valid account (counted in metrics only).
        await producer.batch(
            1,
            [
                dyno(account, "a", "100"),
                dyno(account, "b", "6", 1),
                dyno(account, "c", "-1", 2),
                dyno("not an account!", "d", "1"),
            ],
        )
        ack = await producer.ack(1)
        assert (ack["accepted"], ack["duplicates"]) == (0, 1)
        # A batch of rejected events only: recorded all the same (in the day's minute 30).
        await producer.batch(2, [dyno(account, "e", "-2", 30)])
        assert [r["code"] for r in (await producer.ack(2))["rejected"]] == ["invalid_quantity"]
        assert sorted(r["code"] for r in ack["rejected"]) == [
            "id_conflict",
            "invalid_account",
            "invalid_quantity",
        ]

    invoice = f"/v1/accounts/{account}/invoices/{LAST}"
    explained = ok(
        await api.get(f"{invoice}/lines/1/explanation", params={"limit": 2}), "explainLine"
    )
    assert explained["notes"] == []
    assert [(a["kind"], a["id"], a["code"], a["window"]) for a in explained["audit"]] == [
        ("duplicate", "a", None, DAY),
        ("rejected", "b", "id_conflict", DAY),
    ]
    assert {(a["producer"], a["seq"]) for a in explained["audit"]} == {("platform", 1)}
    first_batch = explained["audit"][0]["batch_id"]
    assert explained["audit"][1]["batch_id"] == first_batch  # where the counted "b" is
    assert explained["audit"][1]["time"] == DAY + MINUTE_MS  # as sent (the rejected copy)
    rest = ok(
        await api.get(
            f"{invoice}/lines/1/explanation",
            params={"limit": 2, "audit_cursor": explained["audit_next_cursor"]},
        ),
        "explainLine",
    )
    invalid, later = rest["audit"]
    assert (later["id"], later["window"]) == ("e", DAY)
    assert (invalid["id"], invalid["code"], invalid["time"]) == (
        "c",
        "invalid_quantity",
        DAY + 2 * MINUTE_MS,
    )
    assert "quantity must be >= 0" in invalid["message"]
    assert invalid["properties"] == {"size": "std-1x", "app": "web"}
    assert rest["audit_next_cursor"] is None
    # The usage figure of the minute of "b" lists its conflict only.
    figure = ok(
        await api.get(
            f"/v1/accounts/{account}/usage/explanation",
            params={"meter": "dyno.seconds", "start": DAY + MINUTE_MS, "window": "minute"},
        ),
        "explainUsage",
    )
    assert [a["id"] for a in figure["audit"]] == ["b"]
    assert figure["value"] == "5"  # the first copy counts
    alone = ok(
        await api.get(
            f"/v1/accounts/{account}/usage/explanation",
            params={"meter": "dyno.seconds", "start": DAY + 30 * MINUTE_MS, "window": "minute"},
        ),
        "explainUsage",
    )
    assert [(a["id"], a["code"], a["seq"]) for a in alone["audit"]] == [
        ("e", "invalid_quantity", 2)
    ]
    error = assert_error(
        await api.get(f"{invoice}/lines/1/explanation", params={"audit_cursor": "zz"}),
        400,
        "invalid_parameter",
    )
    assert error["parameter"] == "audit_cursor"
