"""Operators on a real daemon: GET /v1/alerts and /v1/deliveries, /metrics, re-delivery,
and the CLI (`meterd alerts list`, `meterd deliveries`), with `meterd webhook-listen`'s
signature check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from meterd.cli.main import main as cli
from meterd.cli.webhook_listen import check_signature
from tests.system.test_kill9 import write_config

from .receiver import Receiver
from .test_kill9_alerts import SECRET, Daemon, _alerts_toml, _send, _stream


def test_operators_see_rules_deliveries_and_metrics(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, fail_first=1).start()  # the first attempt fails
    try:
        config = write_config(tmp_path / "config.toml", tmp_path / "store.sqlite3")
        with config.open("a") as out:
            out.write(_alerts_toml(receiver.url))
        text = config.read_text()
        api = "http://" + text.split('[api]\nlisten = "')[1].split('"')[0]
        token = text.split('admin_token = "')[1].split('"')[0]
        daemon = Daemon(config)
        try:
            assert daemon.wait_for('"listening"')
            start = time.time_ns() // 1_000_000 - 60_000
            events = _stream(tmp_path, start)
            assert _send(config, events).wait(60) == 0
            assert receiver.wait_for(lambda r: len(r.delivered_ids()) == 12, 60)
            headers = {"Authorization": f"Bearer {token}"}
            rules = httpx.get(f"{api}/v1/alerts", headers=headers).json()["alerts"]
            assert [r["name"] for r in rules] == ["three", "seven", "twelve", "never"]
            assert rules[0]["threshold"] == "3"
            found = httpx.get(
                f"{api}/v1/deliveries", params={"account": "a0"}, headers=headers
            ).json()
            assert [d["alert"] for d in found["deliveries"]] == ["three", "seven", "twelve"]
            assert found["counts"]["delivered"] == 12
            first = found["deliveries"][0]
            assert first["event_id"] == "a0-2"  # the third event took a0 to 3
            metrics = httpx.get(f"{api}/metrics").text
            assert 'meterd_alert_deliveries{status="delivered"} 12.0' in metrics
            assert "meterd_alert_oldest_undelivered_seconds 0.0" in metrics
            missing = httpx.post(f"{api}/v1/deliveries/nope/redeliver", headers=headers)
            assert missing.status_code == 404
            again = httpx.post(f"{api}/v1/deliveries/{first['id']}/redeliver", headers=headers)
            assert again.json()["status"] == "pending"
            assert receiver.wait_for(lambda r: [x.id for x in r.received].count(first["id"]) >= 2)
            env = {"METERD_URL": api, "METERD_TOKEN": token}
            runner = CliRunner()
            listed = runner.invoke(cli, ["alerts", "list"], env=env)
            assert listed.exit_code == 0, listed.output
            assert "twelve" in listed.output
            shown = runner.invoke(cli, ["deliveries", "a1", "--json"], env=env)
            assert shown.exit_code == 0, shown.output
            assert len(json.loads(shown.output)["deliveries"]) == 3
            table = runner.invoke(cli, ["deliveries", "--status", "delivered"], env=env)
            assert "delivered" in table.output
        finally:
            daemon.process.terminate()
            assert daemon.process.wait(60) == 0
    finally:
        receiver.stop()


def test_webhook_listen_checks_signatures() -> None:
    from meterd.alerts._delivery import sign

    body = b'{"id": "x"}'
    now = 1_800_000_000
    header = sign("k" * 20, now, body)
    assert check_signature("k" * 20, header, body, now) is None
    assert "does not match" in str(check_signature("k" * 20, header, body + b" ", now))
    assert "does not match" in str(check_signature("other" * 4, header, body, now))
    assert "older than" in str(check_signature("k" * 20, header, body, now + 3600))
    assert "no valid" in str(check_signature("k" * 20, "garbage", body, now))
