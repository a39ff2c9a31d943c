"""What a hostile or broken client sends to the operator API, over real HTTP against a daemon
subprocess: integers at and past every bound, bodies too large or nested too deeply, and
GraphQL queries too costly, too deep or too long. Each is a 4xx naming what is wrong, never
a 500, and nothing of it is logged as the daemon's own error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from meterd.api.bodies import MAX_BODY_BYTES, MAX_JSON_DEPTH
from meterd.model import DAY_MS, MAX_MS, MINUTE_MS, Window
from tests.api.test_api import T0, api, assert_error, dyno, ingest
from tests.procs.daemon import DaemonProcess, running_daemon

__all__ = ["api"]  # a fixture, used by name (with this module's daemon)

INT64 = 2**63 - 1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("limits")) as process:
        yield process


@pytest.fixture
def logged_errors(daemon: DaemonProcess) -> Iterator[list[str]]:
    """The daemon's ``api_internal_error`` log lines during the test (each 500 logs one):
    checked empty after it."""
    first = len(daemon.lines)
    errors: list[str] = []
    yield errors
    errors += [line for line in daemon.lines[first:] if '"api_internal_error"' in line]
    assert errors == []


def time_values() -> list[int]:
    """Times at and around every bound: 0, the greatest time and each window's last start
    below it, and the integers SQLite cannot hold or only just holds."""
    edges = {-1, 0, 1, MAX_MS, MAX_MS + 1, INT64, INT64 + 1, 2**64, -(2**63)}
    for window in Window:
        edges |= {window.align(MAX_MS), window.align(MAX_MS) - window.ms}
        edges |= {window.align(INT64), window.align(INT64) - window.ms}
    return sorted(edges)


async def test_no_integer_parameter_reaches_the_store_out_of_range(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str]
) -> None:
    """Every route taking a time, with every edge value in every window: 200 or 400."""
    await ingest(daemon, [dyno("edges", 1)])
    base = "/v1/accounts/edges"
    answers: list[tuple[str, Any, int]] = []

    async def get(path: str, **params: Any) -> None:
        response = await api.get(path, params=params)
        answers.append((path, params, response.status_code))
        if response.status_code == 400:
            assert_error(response, 400, "invalid_parameter")

    async def graphql(query: str, variables: dict[str, Any]) -> None:
        response = await api.post("/v1/graphql", json={"query": query, "variables": variables})
        answers.append(("graphql", (query, variables), response.status_code))
        body = response.json()
        for error in body.get("errors", []):
            assert "SQLite" not in error["message"], error  # no internal error leaks
            assert error.get("extensions", {}).get("code"), error

    for value in time_values():
        text = str(value)
        for window in Window:
            usage = {"meter": "dyno.seconds", "window": window.value}
            await get(f"{base}/usage", **usage, **{"from": text, "to": str(MAX_MS)})
            await get(f"{base}/usage", **usage, **{"from": text, "to": text})
            await get(f"{base}/usage/billed", **usage, **{"from": "0", "to": text})
            await get(f"{base}/usage/explanation", meter="dyno.seconds", start=text)
            await get(
                f"{base}/usage/explanation",
                meter="dyno.seconds",
                start=text,
                window=window.value,
                group_by="size",
                group="S",
            )
            adjustment = {
                "meter": "dyno.seconds",
                "start": value,
                "window": window.value,
                "kind": "credit",
                "quantity": "1",
                "by": "tests",
                "reason": "edges",
            }
            response = await api.post(f"{base}/adjustments", json=adjustment)
            answers.append(("adjust", adjustment, response.status_code))
            if response.status_code == 400:
                assert_error(response, 400, "invalid_parameter")
            explain = (
                'query($start: Millis!, $window: Window!) { account(id: "edges") {'
                ' usageExplanation(meter: "dyno.seconds", start: $start, window: $window)'
                " { value } } }"
            )
            await graphql(explain, {"start": value, "window": window.name})
            usage_query = (
                'query($from: Millis!, $to: Millis!, $window: Window!) { account(id: "edges")'
                ' { usage(meter: "dyno.seconds", from: $from, to: $to, window: $window)'
                " { value } } }"
            )
            await graphql(usage_query, {"from": value, "to": MAX_MS, "window": window.name})
        await get(f"{base}/events", **{"from": text})
        await get(f"{base}/events", **{"to": text})
        await get(f"{base}/adjustments", **{"from": text})
        await get(f"{base}/adjustments", **{"to": text})
    for line in ["\u00b2", "9" * 5000, "0", "1000001", "-1", "1e3", "\u0661"]:
        await get(f"{base}/invoices/2026-11/lines/{line}/explanation")
    failed = [answer for answer in answers if answer[2] >= 500]
    assert failed == [], failed[:5]
    # the greatest time is accepted where a time is, and one past it is not
    ok = await api.get(f"{base}/usage", params={"meter": "dyno.seconds", "from": 0, "to": MAX_MS})
    assert ok.status_code == 200, ok.text
    error = assert_error(
        await api.get(f"{base}/usage", params={"meter": "dyno.seconds", "from": MAX_MS + 1}),
        400,
        "invalid_parameter",
    )
    assert f"between 0 and {MAX_MS}" in error["message"]
    assert "9999-12-31T23:59:59.999Z" in error["message"]


async def test_an_adjustment_outside_any_billable_month_is_refused_and_not_recorded(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str]
) -> None:
    await ingest(daemon, [dyno("far", 1)])
    last_day = MAX_MS - MAX_MS % DAY_MS  # 9999-12-31: past the last billable month
    response = await api.post(
        "/v1/accounts/far/adjustments",
        json={
            "meter": "dyno.seconds",
            "start": last_day,
            "kind": "credit",
            "quantity": "1",
            "by": "tests",
            "reason": "far future",
        },
    )
    error = assert_error(response, 400, "invalid_parameter")
    assert error["parameter"] == "start"
    assert "9998-12" in error["message"], error
    listed = await api.get("/v1/accounts/far/adjustments")
    assert listed.json() == {"adjustments": []}


BODY_ROUTES = [
    "/v1/accounts/bodies/adjustments",
    "/v1/accounts/bodies/events/e1/void",
    "/v1/periods/2026-10/close",
    "/v1/graphql",
]


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_json_bodies_nested_too_deeply_are_400(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str], path: str
) -> None:
    headers = {"Content-Type": "application/json"}
    for body in ("[" * 100_000, "[" * 100_000 + "]" * 100_000):
        response = await api.post(path, content=body, headers=headers)
        error = assert_error(response, 400, "body_too_deep")
        assert f"{MAX_JSON_DEPTH} levels" in error["message"], error
    deep = json.dumps({"by": "x", "reason": [[[[{"a": [[]]}]]]]})
    for _ in range(MAX_JSON_DEPTH):
        deep = '{"a": ' + deep + "}"
    assert_error(await api.post(path, content=deep, headers=headers), 400, "body_too_deep")


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_json_bodies_too_large_are_413(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str], path: str
) -> None:
    big = json.dumps({"by": "x" * MAX_BODY_BYTES}).encode()
    refused = await api.post(path, content=big)
    error = assert_error(refused, 413, "body_too_large")
    assert str(MAX_BODY_BYTES) in error["message"], error
    # Refused unread: the server closes the connection and says so, so the client's pool
    # opens a new one for the next request instead of writing into one being closed.
    assert refused.headers["connection"] == "close"

    # No Content-Length: the limit holds as the body streams in. Exactly one byte too many,
    # so the server reads the whole body before it answers: were there more to send, the
    # server's close after its 413 could reset the connection under the client's last write.
    streamed = big[: MAX_BODY_BYTES + 1]

    async def chunks() -> Any:
        for start in range(0, len(streamed), 65536):
            yield streamed[start : start + 65536]

    assert_error(await api.post(path, content=chunks()), 413, "body_too_large")


async def test_a_body_within_the_limits_still_works(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str]
) -> None:
    await ingest(daemon, [dyno("fine", 1)])
    start = T0 - T0 % MINUTE_MS
    response = await api.post(
        "/v1/accounts/fine/adjustments",
        json={
            "meter": "dyno.seconds",
            "start": start,
            "window": "minute",
            "kind": "credit",
            "quantity": "1",
            "by": "tests",
            "reason": "x" * 1000,
        },
    )
    assert response.status_code == 201, response.text


# ---- GraphQL -----------------------------------------------------------------------------


def invoice_aliases(account: str, count: int) -> str:
    fields = " ".join(f'i{n}: invoice(period: "2026-11") {{ total }}' for n in range(count))
    return f'{{ account(id: "{account}") {{ {fields} }} }}'


async def test_graphql_over_its_limits_is_400_and_logged_at_info_without_the_query(
    daemon: DaemonProcess, api: httpx.AsyncClient, logged_errors: list[str]
) -> None:
    await ingest(daemon, [dyno("gql", 1)])
    first = len(daemon.lines)
    cases = {
        invoice_aliases("gql", 100): "query_too_large",  # 27 s before: more tokens than taken
        invoice_aliases("gql", 50): "query_too_costly",  # 104 s each, four at once, before
        '{ account(id: "gql") { id ' + "@include(if: true) " * 20_000 + "} }": "query_too_large",
        '{ account(id: "gql") { id ' + "zzmarkerzz" * 40: "invalid_query",  # syntax
    }
    for query, code in cases.items():
        response = await api.post("/v1/graphql", json={"query": query})
        assert response.status_code == 400, response.text
        body = response.json()
        assert "data" not in body
        assert [e["extensions"]["code"] for e in body["errors"]] == [code], body
    # what the daemon logged of them: one info line each, no query text

    def graphql_lines(lines: list[str]) -> list[str]:
        return [line for line in lines[first:] if '"graphql' in line]

    await trio.to_thread.run_sync(
        daemon.wait_for_log, lambda lines: len(graphql_lines(lines)) >= len(cases)
    )
    lines = [json.loads(line) for line in graphql_lines(daemon.lines)]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("graphql_client_error", "info")
    ] * len(cases), lines
    assert all("zzmarkerzz" not in str(line) and len(str(line)) < 600 for line in lines)
    assert not [line for line in daemon.lines[first:] if '"level": "error"' in line]
    # a query within the limits runs
    response = await api.post("/v1/graphql", json={"query": invoice_aliases("gql", 2)})
    assert response.status_code == 200, response.text
