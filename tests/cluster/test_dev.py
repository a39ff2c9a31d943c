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


class RacingPorts:
    """free_port as it races another process: the first port it hands out is one the test
    holds (bound after free_port closed its socket), the others are free."""

    def __init__(self) -> None:
        self.taken = socket.socket()
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen()
        self.port: int = self.taken.getsockname()[1]
        self.given: list[int] = []

    def __call__(self) -> int:
        port = free_port() if self.given else self.port
        self.given.append(port)
        return port


@pytest.mark.parametrize("size", [1, 3])
def test_a_port_taken_before_a_server_binds_it_starts_the_set_on_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    ports = RacingPorts()
    monkeypatch.setattr(_dev, "free_port", ports)
    try:
        with running_cluster(tmp_path / "nats", size) as cluster:
            assert ports.given[0] == ports.port
            assert ports.port not in [server.port for server in cluster.servers]
            assert all(server.running for server in cluster.servers)
    finally:
        ports.taken.close()


def test_stores_kept_in_the_directory_are_never_removed_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``meterd cluster dev --dir DIR`` on stores of an earlier run: a port taken fails the
    start (saying so) and leaves the stores as they were."""
    kept = tmp_path / "nats" / "n1" / "kept"
    kept.parent.mkdir(parents=True)
    kept.write_text("an earlier run's store")
    ports = RacingPorts()
    monkeypatch.setattr(_dev, "free_port", ports)
    try:
        with (
            pytest.raises(RuntimeError, match="address already in use"),
            running_cluster(tmp_path / "nats", 1),
        ):
            pass
    finally:
        ports.taken.close()
    assert kept.read_text() == "an earlier run's store"
    assert ports.given == [ports.port]  # no second start
