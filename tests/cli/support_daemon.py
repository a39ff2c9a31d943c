"""Shared by the billing-support CLI tests: one daemon subprocess and the commands run
in process against it (click's runner: no interpreter start per command)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from meterd.billing import Period
from meterd.cli.main import main
from meterd.isotime import format_time
from tests.cli.test_send import T0, meterd_send, write
from tests.procs.daemon import DaemonProcess


def this_month_start() -> int:
    """00:00 UTC of the first day of the current month (T0's)."""
    day = format_time(T0)[:7]
    return Period.parse(day).start_ms


LAST_MONTH_DAY = this_month_start() - 86_400_000  # the last day of the previous month
"""00:00 UTC of the previous month's last day: inside the late window (35 days) whatever
today is, and in a month that is over (it can be closed)."""


@dataclass
class Operator:
    """The operator's shell: ``run("usage", ...)`` is ``meterd usage ...`` against the
    daemon (``$METERD_URL`` / ``$METERD_TOKEN`` set)."""

    daemon: DaemonProcess

    @property
    def env(self) -> dict[str, str]:
        return {
            "METERD_URL": self.daemon.api_url,
            "METERD_TOKEN": self.daemon.config.api.admin_token,
        }

    def run(self, *args: str, input: str | None = None) -> Result:
        clean = {key: None for key in os.environ if key.startswith("METERD_")}
        runner = CliRunner()
        return runner.invoke(main, list(args), env={**clean, **self.env}, input=input)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code == 0, (result.output, result.stderr, result.exception)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def produce(self, where: Path, events: list[Mapping[str, Any]]) -> None:
        source = write(where / "events.jsonl", [json.dumps(e) for e in events])
        result = meterd_send(
            str(source), "--url", self.daemon.ingest_url, token=self.daemon.token("platform")
        )
        assert result.returncode == 0, result.stderr


def event(id: str, account: str, time: int, quantity: Any = 1, **properties: str) -> dict[str, Any]:
    meter = "dyno.seconds"
    return {
        "id": id,
        "account": account,
        "meter": meter,
        "time": time,
        "quantity": quantity,
        "properties": properties,
    }


__all__ = ["LAST_MONTH_DAY", "T0", "Operator", "event", "this_month_start"]
