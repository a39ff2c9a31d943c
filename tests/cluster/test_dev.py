"""``meterd cluster dev``: a local NATS cluster a node can use, stopped by SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import trio

from meterd.cluster import AsyncioBridge, connect


async def test_meterd_cluster_dev_runs_a_usable_cluster(bridge: AsyncioBridge) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "meterd", "cluster", "dev", "--servers", "3"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = ""
    try:
        with trio.fail_after(30):
            while "Ctrl-C" not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, f"meterd cluster dev exited: {seen}"
                seen += chunk.decode()
        table = re.search(r"nats = (\[.*\])", seen)
        assert table is not None, seen
        urls = re.findall(r'"(nats://[^"]+)"', table.group(1))
        assert len(urls) == 3
        conn = await connect(bridge, urls, name="dev-check")
        info = await conn.ensure_stream("DEV_CHECK", ["dev.check"])
        assert info.replicas == 3
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
