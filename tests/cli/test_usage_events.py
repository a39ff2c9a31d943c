"""``meterd usage ACCOUNT`` over every meter with totals and calendar months, and ``meterd
events --id/--property`` (issue 18 item 2), against a real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meterd.isotime import format_time
from tests.cli.support_daemon import T0, Operator
from tests.procs.daemon import running_daemon

DAY = 86_400_000
ACCOUNT = "usage-all"
FROM = format_time(T0 - T0 % DAY - DAY)
TO = format_time(T0 - T0 % DAY + DAY)


def ev(id: str, meter: str, time: int, quantity: Any, **properties: str) -> dict[str, Any]:
    return {
        "id": id,
        "account": ACCOUNT,
        "meter": meter,
        "time": time,
        "quantity": quantity,
        "properties": properties,
    }


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with running_daemon(tmp_path_factory.mktemp("usage")) as daemon:
        operator = Operator(daemon)
        yesterday = T0 - DAY
        operator.produce(
            tmp_path_factory.mktemp("events"),
            [
                ev("d1", "dyno.seconds", yesterday, "1.5", size="std", app="web"),
                ev("d2", "dyno.seconds", T0, 2, size="big", app="web"),
                ev("d3", "dyno.seconds", T0, 3, size="std", app="api"),
                ev("p1", "postgres.storage_bytes", yesterday, 900, database="main"),
                ev("p2", "postgres.storage_bytes", T0, 700, database="main"),
                ev("u1", "api.active_users", yesterday, 1, user="ann"),
                ev("u2", "api.active_users", T0, 1, user="ann"),
                ev("u3", "api.active_users", T0, 1, user="bob"),
            ],
        )
        yield operator


def test_every_meter_with_its_total_merged_by_its_aggregation(op: Operator) -> None:
    document = op.json("usage", ACCOUNT, "--from", FROM, "--to", TO, "--window", "day")
    meters = {m["meter"]: m for m in document["meters"]}
    assert set(meters) == {m.name for m in op.daemon.config.meters}
    assert [r["value"] for r in meters["dyno.seconds"]["rows"]] == ["1.5", "5"]
    assert meters["dyno.seconds"]["total"] == "6.5"
    assert meters["postgres.storage_bytes"]["total"] == "900"  # a max, not 1600
    assert [r["value"] for r in meters["api.active_users"]["rows"]] == ["1", "2"]
    assert meters["api.active_users"]["total"] == "2"  # ann and bob, not 1 + 2
    assert meters["router.requests"] == {
        "meter": "router.requests",
        "aggregation": "count",
        "unit": "requests",
        "rows": [],
        "total": None,
    }
    table = op.ok("usage", ACCOUNT, "--from", FROM, "--to", TO, "--window", "day").splitlines()
    assert table[0].split() == ["meter", "start", "end", "value", "unit"]
    totals = {line.split()[0]: line.split()[2] for line in table if " total " in line}
    assert totals == {
        "dyno.seconds": "6.5",
        "postgres.storage_bytes": "900",
        "api.active_users": "2",
    }


def test_calendar_months_and_one_meter_with_a_total_row(op: Operator) -> None:
    months = op.json("usage", ACCOUNT, "--meter", "api.active_users", "--from", FROM, "--to", TO,
                     "--window", "month")  # fmt: skip
    [meter] = months["meters"]
    assert months["window"] == "month"
    assert months["from"] % DAY == 0
    assert meter["total"] == "2"
    assert all(format_time(r["start"])[8:] == "01T00:00:00Z" for r in meter["rows"])
    table = op.ok("usage", ACCOUNT, "--meter", "dyno.seconds", "--from", FROM, "--to", TO,
                  "--window", "day").splitlines()  # fmt: skip
    assert table[0].split() == ["start", "end", "value"]
    assert table[-1].split() == ["total", "6.5"]
    grouped = op.run("usage", ACCOUNT, "--meter", "dyno.seconds", "--window", "month",
                     "--group-by", "size")  # fmt: skip
    assert grouped.exit_code == 2
    assert "--group-by works with minute, hour and day windows" in grouped.stderr


def test_the_summary_route_names_a_wrong_window(op: Operator) -> None:
    with httpx.Client(
        base_url=op.daemon.api_url,
        headers={"Authorization": f"Bearer {op.daemon.config.api.admin_token}"},
    ) as client:
        wrong = client.get(
            f"/v1/accounts/{ACCOUNT}/usage/summary", params={"from": 0, "to": 1, "window": "week"}
        )
        unknown = client.get("/v1/accounts/nobody/usage/summary", params={"from": 0, "to": 1})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["parameter"] == "window"
    assert unknown.status_code == 404


def test_events_by_id_and_by_property(op: Operator) -> None:
    by_id = op.json("events", ACCOUNT, "--id", "d2", "--id", "p1", "--limit", "2")
    assert sorted(e["id"] for e in by_id["events"]) == ["d2", "p1"]
    assert by_id["next_cursor"] is None
    by_property = op.json("events", ACCOUNT, "--property", "size=std", "--property", "app=api")
    assert [e["id"] for e in by_property["events"]] == ["d3"]
    assert "matching the filter" in op.ok("events", ACCOUNT, "--id", "nope")
    wrong = op.run("events", ACCOUNT, "--property", "size")
    assert wrong.exit_code == 2
    assert "'size' is not NAME=VALUE" in wrong.stderr


def test_one_id_and_one_property_are_filtered_by_the_daemon_a_page_at_a_time(
    op: Operator,
) -> None:
    by_id = op.json("events", ACCOUNT, "--id", "d3", "--limit", "1")
    assert [e["id"] for e in by_id["events"]] == ["d3"]
    assert by_id["next_cursor"] is None  # the daemon scanned to the end for it
    # A page holds `limit` matching events; the cursor goes on to the next match.
    first = op.json("events", ACCOUNT, "--property", "size=std", "--limit", "1")
    assert [e["id"] for e in first["events"]] == ["d1"]
    assert first["next_cursor"] is not None
    second = op.json(
        "events", ACCOUNT, "--property", "size=std", "--limit", "1", "--cursor",
        first["next_cursor"],
    )  # fmt: skip
    assert [e["id"] for e in second["events"]] == ["d3"]
    both = op.json("events", ACCOUNT, "--property", "app=web", "--id", "d2")
    assert [e["id"] for e in both["events"]] == ["d2"]


def test_the_events_route_filters_by_id_and_property_in_both_orders(op: Operator) -> None:
    with httpx.Client(
        base_url=op.daemon.api_url,
        headers={"Authorization": f"Bearer {op.daemon.config.api.admin_token}"},
    ) as client:

        def ids(**params: Any) -> list[str]:
            response = client.get(f"/v1/accounts/{ACCOUNT}/events", params=params)
            assert response.status_code == 200, response.text
            return [e["id"] for e in response.json()["events"]]

        assert ids(property="database=main") == ["p1", "p2"]
        assert ids(property="database=main", order="desc") == ["p2", "p1"]
        assert ids(property="user=bob", order="desc") == ["u3"]
        assert ids(id="u2") == ["u2"]
        assert ids(id="u2", property="user=bob") == []
        assert ids(id="u2", meter="dyno.seconds") == []
        assert ids(property="user=") == []  # an empty value is a value: no such event
        wrong = client.get(f"/v1/accounts/{ACCOUNT}/events", params={"property": "user"})
    assert wrong.status_code == 400, wrong.text
    assert wrong.json()["error"]["parameter"] == "property"
