"""``meterd cluster dev``: a local NATS cluster a node can use, stopped by SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meterd.cluster import AsyncioBridge, _dev, connect
from meterd.cluster._dev import free_port, running_cluster


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


@pytest.mark.parametrize("size", [1, 3])
def test_a_port_taken_before_a_server_binds_it_starts_the_set_on_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """free_port's answer is only true when it is given: here the first port handed out is
    one this test holds, as another process would after free_port closed its socket."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    given: list[int] = []

    def racing_free_port() -> int:
        port = taken.getsockname()[1] if not given else free_port()
        given.append(port)
        return port

    monkeypatch.setattr(_dev, "free_port", racing_free_port)
    try:
        with running_cluster(tmp_path / "nats", size) as cluster:
            assert given[0] == taken.getsockname()[1]
            ports = [server.port for server in cluster.servers]
            assert taken.getsockname()[1] not in ports
            assert all(server.running for server in cluster.servers)
    finally:
        taken.close()
