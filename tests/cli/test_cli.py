"""The ``meterd`` command as a newcomer runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _meterd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meterd", *args]


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ingest]\nlisten = "nowhere"\n')
    result = subprocess.run(
        _meterd("run", "--config", str(config)), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "ingest.listen" in result.stderr


def test_migrate_refuses_a_bad_config_as_run_does(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ingest]\nlisten = "nowhere"\n')
    result = subprocess.run(
        _meterd("migrate", "partitions", "--dry-run", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("meterd: bad config: ")
    assert "ingest.listen" in result.stderr


def test_run_starts_on_shipped_config_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"  # a copy, so the store lands in tmp_path/var
    config.write_text((ROOT / "config.toml").read_text())
    process = subprocess.Popen(
        _meterd("run", "--config", str(config), "--json-logs"),
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            if "meterd_started" in line:
                break
        else:
            raise AssertionError(f"daemon did not start: {lines}")
        # The shipped config runs gateway + owners ([partitions] owners = "auto", >= 2).
        started = json.loads(lines[-1])
        assert len(started["owners"]) >= 2, started
        assert all(started["owners"]), started  # each owner's pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert (tmp_path / "var" / "meterd.shards" / "shard-000.sqlite3").exists()
    finally:
        process.kill()
        process.wait()
