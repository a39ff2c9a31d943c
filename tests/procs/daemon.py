"""``python -m meterd run`` as a subprocess, for end-to-end tests (test_send, test_api).

:func:`running_daemon` writes a config (free loopback ports, the store under ``where``),
starts the daemon, waits for its ``listening`` log line, and on exit sends SIGTERM and
checks that it stops cleanly (exit 0) within 30 s (unless the test killed it with
:meth:`DaemonProcess.kill`). On a ``where`` that holds a store already, it runs on that one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterd.config import Config, load
from tests.system.test_kill9 import write_config

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DaemonProcess:
    config_path: Path
    config: Config
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)  # its log, as it comes
    killed: bool = False  # by the test (kill -9): it is not expected to stop cleanly
    logged: threading.Condition = field(default_factory=threading.Condition)  # a line came

    def wait_for_log(self, done: Callable[[list[str]], bool], timeout: float = 30) -> bool:
        """Block until ``done(lines)`` holds (True), or ``timeout`` seconds pass (False)."""
        with self.logged:
            return self.logged.wait_for(lambda: done(self.lines), timeout)

    def kill(self) -> None:
        """``kill -9`` the daemon and wait for it to be gone."""
        self.killed = True
        self.process.kill()
        self.process.wait()

    @property
    def ingest_url(self) -> str:
        return f"ws://{self.config.ingest.listen}/v1/ingest"

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api.listen}"

    def token(self, producer: str) -> str:
        return next(p.token for p in self.config.producers if p.name == producer)


@contextlib.contextmanager
def running_daemon(
    where: Path, owners: int = 0, *, config_path: Path | None = None, **config: Any
) -> Iterator[DaemonProcess]:
    """A daemon on a fresh store in ``where``; ``config`` goes to ``write_config``;
    ``owners`` >= 1: a gateway over that many owner processes (``[partitions] owners``).
    ``config_path``: a config file written already, used as it is (``owners`` and
    ``config`` are then not applied)."""
    if config_path is None:
        config_path = write_config(where / "config.toml", where / "store.sqlite3", **config)
        if owners:
            with config_path.open("a") as file:
                file.write(f"\n[partitions]\nowners = {owners}\n")
            if (where / "store.sqlite3").exists():  # a store written for the test: to shards
                command = ["migrate", "partitions", "--config", str(config_path)]
                subprocess.run([sys.executable, "-m", "meterd", *command], check=True, cwd=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "meterd", "run", "--config", str(config_path), "--json-logs"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    daemon = DaemonProcess(config_path, load(config_path), process)
    listening = threading.Event()

    def drain() -> None:  # keep reading, or the daemon blocks on a full pipe
        assert process.stderr is not None
        for line in process.stderr:
            with daemon.logged:
                daemon.lines.append(line)
                daemon.logged.notify_all()
            if '"listening"' in line:
                listening.set()
        listening.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        assert listening.wait(30), "the daemon did not start"
        assert any('"listening"' in line for line in daemon.lines), (
            "the daemon exited before listening:\n" + "".join(daemon.lines[-20:])
        )
        assert process.poll() is None, daemon.lines
        yield daemon
        if daemon.killed:
            return
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, daemon.lines[-20:]
    finally:
        process.kill()
        process.wait()
        thread.join(10)
