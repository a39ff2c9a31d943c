"""``meterd migrate partitions`` and ``meterd run`` as an operator meets them: a running
daemon holds the store, a start on files of another layout is refused with the command to
run, the migration moves them, and the daemon starts on the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from meterd.config import load
from tests.partitions.migrate_data import contents
from tests.procs.daemon import running_daemon

ROOT = Path(__file__).resolve().parents[2]


def meterd(
    *args: str, stdin: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
    if token is not None:
        env["METERD_PRODUCER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "meterd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def with_partitions(config: Path, name: str, owners: int) -> Path:
    """A copy of ``config`` (same store) asking for 4 shards (fewer files to fsync)."""
    path = config.with_name(name)
    path.write_text(
        config.read_text() + f"\n[partitions]\nowners = {owners}\ncount = 64\nshard_size = 16\n"
    )
    return path


def test_the_operator_path_from_one_store_to_shards_and_back(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = "".join(
        json.dumps(
            {
                "id": f"e{i}",
                "account": f"acct-{i % 25}",
                "meter": "dyno.seconds",
                "quantity": str(i),
                "time": now - i,
            }
        )
        + "\n"
        for i in range(200)
    )
    with running_daemon(tmp_path) as daemon:
        sent = meterd("send", "-", "--config", str(daemon.config_path), stdin=events,
                      token=daemon.token("platform"))  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        sharded = with_partitions(daemon.config_path, "sharded.toml", owners=2)
        busy = meterd("migrate", "partitions", "--config", str(sharded))
        assert busy.returncode == 1
        assert "a meterd daemon is using the store" in busy.stderr
        assert "stop it first" in busy.stderr
    single = load(daemon.config_path)
    before = contents(single)

    refused = meterd("run", "--config", str(sharded))
    assert refused.returncode == 1
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(f"meterd: cannot start: store.path {single.store_path}: found the")
    assert f"run `meterd migrate partitions --config {sharded}` (with meterd stopped)" in message

    moved = meterd("migrate", "partitions", "--config", str(sharded))
    assert moved.returncode == 0, moved.stderr
    assert "moved the single-file store" in moved.stdout
    assert contents(load(sharded)) == before

    refused = meterd("run", "--config", str(daemon.config_path))
    assert refused.returncode == 1
    assert "found 4 shard files" in refused.stderr
    assert "[partitions] owners = 0 asks for the single-file store" in refused.stderr

    back = meterd("migrate", "partitions", "--config", str(daemon.config_path))
    assert back.returncode == 0, back.stderr
    assert contents(single) == before
    with running_daemon(tmp_path) as again:  # the same store: it starts and serves it
        assert again.process.poll() is None
