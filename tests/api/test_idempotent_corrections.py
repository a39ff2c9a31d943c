"""Corrections safe to retry: the ``Idempotency-Key`` header of adjustments and voids, over
real HTTP against a daemon subprocess, in one process and as a gateway over owners.

A retry with the same key and body answers the first correction (200, ``replayed``) and
records nothing; another body under the key is 409 ``idempotency_conflict`` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meterd.api.openapi import openapi_document
from tests.api.test_api import api, assert_error, ingest
from tests.api.test_billing_api import DAY, LAST, dyno, ok
from tests.procs.daemon import DaemonProcess, running_daemon

__all__ = ["api"]  # a fixture, used by name (with this module's daemon)


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "owners"])
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("idem"), owners=request.param) as process:
        yield process


def credit(quantity: str = "500", reason: str = "outage") -> dict[str, Any]:
    return {
        "meter": "dyno.seconds",
        "start": DAY,
        "dimensions": {"size": "std-1x", "app": "web"},
        "kind": "credit",
        "quantity": quantity,
        "by": "alice",
        "reason": reason,
    }


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_a_retried_adjustment_with_the_same_key_records_once(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("i-adj", "a", "1000")])
    url = "/v1/accounts/i-adj/adjustments"
    first = await api.post(url, json=credit(), headers=key("ticket-4411 credit"))
    recorded = ok(first, "adjust", 201)
    assert recorded["replayed"] is False
    assert "idempotent-replayed" not in first.headers
    assert recorded["adjustment"]["idempotency_key"] == "ticket-4411 credit"
    for _ in range(2):  # the answer was lost: billing support sends it again
        again = await api.post(url, json=credit(), headers=key("ticket-4411 credit"))
        replayed = ok(again, "adjust", 200)
        assert again.headers["idempotent-replayed"] == "true"
        assert replayed["replayed"] is True
        assert replayed["adjustment"] == recorded["adjustment"]  # same id, at, everything
    # the same quantity written otherwise is the same request
    same = await api.post(url, json=credit("500.0"), headers=key("ticket-4411 credit"))
    assert ok(same, "adjust", 200)["adjustment"]["id"] == recorded["adjustment"]["id"]

    listed = ok(
        await api.get(url, params={"from": LAST.start_ms, "to": LAST.end_ms}), "adjustments"
    )
    assert [a["id"] for a in listed["adjustments"]] == [recorded["adjustment"]["id"]]
    [line] = ok(await api.get(f"/v1/accounts/i-adj/invoices/{LAST}"), "invoice")["lines"]
    assert (line["usage"], line["adjusted"], line["quantity"]) == ("1000", "-500", "500")


async def test_the_same_key_with_another_body_is_a_conflict_naming_the_field(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("i-conflict", "a", "1000"), dyno("i-conflict", "b", "5", 1)])
    url = "/v1/accounts/i-conflict/adjustments"
    ok(await api.post(url, json=credit(), headers=key("k-1")), "adjust", 201)
    refused = await api.post(url, json=credit("600"), headers=key("k-1"))
    assert_error(refused, 409, "idempotency_conflict")
    error = refused.json()["error"]
    assert error["parameter"] == "quantity"
    assert "'k-1'" in error["message"]
    assert "adjustment #" in error["message"]
    refused = await api.post(url, json=credit(reason="another"), headers=key("k-1"))
    assert refused.json()["error"]["parameter"] == "reason"
    # a key is the account's: a void under an adjustment's key is another request
    refused = await api.post(
        "/v1/accounts/i-conflict/events/b/void",
        json={"by": "bob", "reason": "sent twice"},
        headers=key("k-1"),
    )
    assert_error(refused, 409, "idempotency_conflict")
    assert refused.json()["error"]["parameter"] == "operation"
    # the same key on another account is another correction
    await ingest(daemon, [dyno("i-conflict-2", "a", "1000")])
    other = "/v1/accounts/i-conflict-2/adjustments"
    ok(await api.post(other, json=credit(), headers=key("k-1")), "adjust", 201)
    listed = ok(
        await api.get(url, params={"from": LAST.start_ms, "to": LAST.end_ms}), "adjustments"
    )
    assert len(listed["adjustments"]) == 1


async def test_a_retried_void_with_the_same_key_answers_the_void_not_already_void(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("i-void", "a", "1000"), dyno("i-void", "b", "7", 1)])
    url = "/v1/accounts/i-void/events/b/void"
    body = {"by": "bob", "reason": "sent twice"}
    recorded = ok(await api.post(url, json=body, headers=key("void-b")), "voidEvent", 201)
    again = await api.post(url, json=body, headers=key("void-b"))
    assert ok(again, "voidEvent", 200)["void"] == recorded["void"]
    assert again.headers["idempotent-replayed"] == "true"
    # without the key (or with another) it is a second void: refused as before
    assert_error(await api.post(url, json=body), 409, "already_void")
    assert_error(await api.post(url, json=body, headers=key("other")), 409, "already_void")
    refused = await api.post(url, json={**body, "by": "carol"}, headers=key("void-b"))
    assert_error(refused, 409, "idempotency_conflict")
    assert refused.json()["error"]["parameter"] == "by"
    voids = ok(await api.get("/v1/accounts/i-void/voids"), "voids")["voids"]
    assert [(v["event_id"], v["idempotency_key"]) for v in voids] == [("b", "void-b")]


async def test_without_a_key_each_request_is_a_new_correction(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("i-nokey", "a", "1000")])
    url = "/v1/accounts/i-nokey/adjustments"
    first = ok(await api.post(url, json=credit("1")), "adjust", 201)["adjustment"]
    second = ok(await api.post(url, json=credit("1")), "adjust", 201)["adjustment"]
    assert first["id"] != second["id"]
    assert first["idempotency_key"].startswith("meterd-")  # made by the server
    assert first["idempotency_key"] != second["idempotency_key"]


@pytest.mark.parametrize(
    ("value", "why"),
    [("x" * 201, "1 to 200"), ("tab\there", "printable"), ("é", "printable")],
)
async def test_a_bad_key_is_refused_naming_the_header(
    daemon: DaemonProcess, api: httpx.AsyncClient, value: str, why: str
) -> None:
    response = await api.post(
        "/v1/accounts/i-bad/adjustments",
        json=credit(),
        headers=[(b"Idempotency-Key", value.encode())],
    )
    assert_error(response, 400, "invalid_parameter")
    error = response.json()["error"]
    assert error["parameter"] == "Idempotency-Key"
    assert why in error["message"]


def test_the_openapi_document_shows_the_header_on_both_corrections() -> None:
    paths = openapi_document()["paths"]
    for path in (
        "/v1/accounts/{account}/adjustments",
        "/v1/accounts/{account}/events/{event}/void",
    ):
        operation = paths[path]["post"]
        [header] = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key"
        assert header["required"] is False
        assert header["schema"]["maxLength"] == 200
        assert "200" in operation["responses"]
        assert "201" in operation["responses"]
