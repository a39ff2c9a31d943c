"""Billing support from the command line (issue 18 item 2): ``meterd accounts``, ``adjust``,
``void`` and ``close`` against a real daemon, and the API's ``/v1/accounts`` and ISO-8601
``start`` behind them. Each test uses its own accounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meterd.isotime import format_time
from tests.cli.support_daemon import LAST_MONTH_DAY, T0, Operator, event
from tests.procs.daemon import DaemonProcess, running_daemon

DAY = 86_400_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("support")) as process:
        yield process


@pytest.fixture(scope="module")
def op(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Operator:
    operator = Operator(daemon)
    where = tmp_path_factory.mktemp("events")
    operator.produce(
        where,
        [
            *(event(f"a{n}", f"shop-{n:02d}", T0, 10, size="std") for n in range(12)),
            event("acme-1", "Acme-Corp", T0, 100, size="std"),
            event("late-1", "closing", LAST_MONTH_DAY + 3_600_000, 500, size="std"),
            event("late-2", "closing", LAST_MONTH_DAY + 7_200_000, 70, size="big"),
        ],
    )
    return operator


def api(daemon: DaemonProcess) -> httpx.Client:
    return httpx.Client(
        base_url=daemon.api_url,
        headers={"Authorization": f"Bearer {daemon.config.api.admin_token}"},
    )


# ---- /v1/accounts and meterd accounts ---------------------------------------------------------


def test_accounts_are_paged_by_id_and_searched(op: Operator, daemon: DaemonProcess) -> None:
    with api(daemon) as client:
        first = client.get("/v1/accounts", params={"search": "shop-", "limit": 5}).json()
        assert [a["account"] for a in first["accounts"]] == [f"shop-{n:02d}" for n in range(5)]
        assert first["next_after"] == "shop-04"
        rest = client.get(
            "/v1/accounts", params={"search": "SHOP-", "limit": 100, "after": "shop-04"}
        ).json()
        assert [a["account"] for a in rest["accounts"]] == [f"shop-{n:02d}" for n in range(5, 12)]
        assert rest["next_after"] is None
        assert all(isinstance(a["awake"], bool) and a["updated_at"] > 0 for a in rest["accounts"])
        refused = client.get("/v1/accounts", params={"limit": 0})
        assert refused.status_code == 400
        assert refused.json()["error"]["parameter"] == "limit"
        schema = client.get("/openapi.json").json()
        assert "/v1/accounts" in schema["paths"]


def test_meterd_accounts_searches_and_follows_pages(op: Operator) -> None:
    table = op.ok("accounts", "acme")
    assert "Acme-Corp" in table
    assert "shop-" not in table
    one_page = op.run("accounts", "shop", "--limit", "3")
    assert one_page.exit_code == 0
    assert one_page.stdout.count("shop-") == 3
    assert "--after shop-02" in one_page.stderr
    everything = op.json("accounts", "shop", "--limit", "3", "--all")
    assert [a["account"] for a in everything["accounts"]] == [f"shop-{n:02d}" for n in range(12)]
    assert everything["next_after"] is None
    assert "no accounts with 'nobody' in their id" in op.ok("accounts", "nobody")


# ---- adjustments -----------------------------------------------------------------------------


def test_the_api_takes_an_iso_start_and_names_a_bad_one(
    op: Operator, daemon: DaemonProcess
) -> None:
    day = format_time(T0 - T0 % DAY)[:10]
    body = {
        "meter": "dyno.seconds",
        "start": day,
        "dimensions": {"size": "std"},
        "kind": "credit",
        "quantity": "4",
        "by": "alice",
        "reason": "iso start",
    }
    with api(daemon) as client:
        made = client.post("/v1/accounts/shop-00/adjustments", json=body)
        assert made.status_code == 201, made.text
        assert made.json()["adjustment"]["start"] == T0 - T0 % DAY
        for bad, why in (("2026-11-31", "not an ISO-8601"), ("20261120", "ISO-8601")):
            refused = client.post("/v1/accounts/shop-00/adjustments", json={**body, "start": bad})
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["parameter"] == "start"
            assert why in error["message"]
        schema = client.get("/openapi.json").json()
    start = schema["components"]["schemas"]["AdjustmentBody"]["properties"]["start"]
    assert {kind.get("type") for kind in start["anyOf"]} == {"integer", "string"}


def test_adjust_shows_what_it_will_record_and_needs_a_yes(op: Operator) -> None:
    day = format_time(T0 - T0 % DAY)[:10]
    args = [
        "adjust", "shop-01", "--meter", "dyno.seconds", "--kind", "credit", "--quantity", "3",
        "--on", day, "--dim", "size=std", "--by", "alice", "--reason", "outage",
    ]  # fmt: skip
    refused = op.run(*args)
    assert refused.exit_code == 2
    plan = f"will record: credit -3 dyno.seconds (size=std) for account 'shop-01' on the day {day}"
    assert plan in refused.stderr
    assert "pass --yes" in refused.stderr
    done = op.run(*args, "--yes")
    assert done.exit_code == 0, done.output
    assert "recorded adjustment #" in done.stdout
    assert f"on the day {day} (UTC)" in done.stdout
    usage = op.json("usage", "shop-01", "--meter", "dyno.seconds", "--from", day, "--to",
                    format_time(T0 - T0 % DAY + DAY), "--window", "day")  # fmt: skip
    assert usage["rows"][0]["value"] == "10"  # raw usage; the credit is billing's


def test_adjust_refuses_a_start_inside_the_window(op: Operator) -> None:
    result = op.run(
        "adjust", "shop-02", "--meter", "dyno.seconds", "--kind", "debit", "--quantity", "1",
        "--on", format_time(T0 - T0 % DAY + 3_600_000), "--by", "a", "--reason", "b", "--yes",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "is not the start of a day (UTC); did you mean" in result.stderr


def test_an_interactive_no_writes_nothing(op: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    import meterd.cli.support as support

    monkeypatch.setattr(support, "_interactive", lambda: True)
    result = op.run("void", "shop-03", "a3", "--by", "alice", "--reason", "test", input="n\n")
    assert result.exit_code == 1
    assert "will record: void event 'a3' of account 'shop-03': 10 dyno.seconds" in result.stderr
    assert "nothing written" in result.stderr
    with api(op.daemon) as client:
        assert client.get("/v1/accounts/shop-03/voids").json() == {"voids": []}


# ---- void and close, and the restatement they cause -------------------------------------------


def test_close_then_void_and_adjust_restate_the_month(op: Operator) -> None:
    month = format_time(LAST_MONTH_DAY)[:7]
    closed = op.run("close", month, "--by", "carol", "--yes")
    assert closed.exit_code == 0, closed.output
    assert f"closed {month} for " in closed.stdout
    again = op.run("close", month, "--by", "carol", "--yes")
    assert again.exit_code == 1
    assert "already_closed" in again.stderr
    voided = op.run(
        "void", "closing", "late-2", "--period", month, "--by", "bob", "--reason", "test dyno",
        "--yes",
    )  # fmt: skip
    assert voided.exit_code == 0, voided.output
    assert "recorded void #" in voided.stdout
    assert "70 dyno.seconds at " in voided.stdout
    assert f"restatement #1 of {month}" in voided.stdout
    day = format_time(LAST_MONTH_DAY)[:10]
    adjusted = op.run(
        "adjust", "closing", "--meter", "dyno.seconds", "--kind", "credit", "--quantity", "100",
        "--on", day, "--dim", "size=std", "--by", "bob", "--reason", "sla", "--yes",
    )  # fmt: skip
    assert adjusted.exit_code == 0, adjusted.output
    assert f"restatement #2 of {month}" in adjusted.stdout
    with api(op.daemon) as client:
        metrics = client.get("/metrics").text
    assert 'meterd_billing_restatements_total{cause="correction"} 2.0' in metrics
    with api(op.daemon) as client:  # the body's period may be a date in the month
        by_date = client.post(
            "/v1/accounts/closing/events/late-1/void",
            json={"by": "bob", "reason": "twice", "period": format_time(LAST_MONTH_DAY)[:10]},
        )
        bad = client.post(
            "/v1/accounts/closing/events/late-1/void",
            json={"by": "bob", "reason": "twice", "period": "2026-02-30"},
        )
    assert by_date.status_code == 201, by_date.text
    assert by_date.json()["restatement"]["causes"][0].startswith("void #2 of event 'late-1'")
    assert bad.status_code == 400
    assert bad.json()["error"]["parameter"] == "period"
    unknown = op.run("void", "closing", "nope", "--by", "b", "--reason", "r", "--yes")
    assert unknown.exit_code == 1
    assert "account 'closing' has no event 'nope'" in unknown.stderr


def test_writing_commands_without_a_terminal_refuse(op: Operator, tmp_path: Path) -> None:
    for args in (
        ["close", "2020-01", "--by", "x"],
        ["void", "shop-04", "a4", "--by", "x", "--reason", "y"],
    ):
        result = op.run(*args)
        assert result.exit_code == 2, result.output
        assert "nothing written without confirmation: pass --yes" in result.stderr
