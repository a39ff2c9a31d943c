"""A full disk, end to end: the real daemon (``python -m meterd run``) on a tiny tmpfs.

protocol.md §2.3/§2.5 promise an ack only after durability. On a full disk that means: no
ack for what was not committed, nothing acknowledged lost or corrupted, and the daemon
recovers by itself once space is freed (the producer re-sends what was not acknowledged;
idempotency makes it safe). Here the store (and the billing database beside it) live on a
tmpfs of a few MiB that a filler file makes almost full; a producer streams batches over
the real websocket protocol until the store cannot commit. Then:

* the daemon is still running, the producer got ``error`` ``unavailable`` (close 1011,
  docs/ingest.md), the log has one structured ``store_commit_failed`` line naming the
  store's path and the disk being full, and ``/healthz`` answers 503 saying so;
* after the filler is deleted, ``/healthz`` is 200 again by itself (the idle writer probes),
  then the producer re-sends every unacknowledged batch and the usage endpoint's totals
  equal exactly the unique events sent;
* the same with ``kill -9`` while the disk is full, then a restart: the totals again, and
  ``PRAGMA integrity_check`` is ``ok``.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket

from tests.procs.daemon import DaemonProcess, running_daemon

DISK_BYTES = 4 * 1024 * 1024
HEADROOM = 192 * 1024  # left free after the filler: a few batches commit, then it is full
EVENTS_PER_BATCH = 40
PADDING = "x" * 200  # a property value: each batch takes ~20 KiB of journal
ACCOUNTS = ("acme", "globex.io", "initech")
METER = "router.requests"  # a count meter: the total is the number of unique events
DAY_MS = 86_400_000
T0 = time.time_ns() // 1_000_000 - 10 * 60_000
TIMEOUT = 15.0  # seconds; reached only if something hangs


# --------------------------------------------------------------------------- the disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``DISK_BYTES``, mounted for the test (skips it if mounting is not
    permitted). A sync fixture, so that the skip keeps its reason (pytest-trio loses it).
    Its path is long: a producer's error message must still end with the reason."""
    where = tmp_path / "a-store-path-long-enough-to-push-the-reason-out-of-a-short-message"
    where.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        said = (mount.stderr.strip().splitlines() or [f"mount exited {mount.returncode}"])[0]
        pytest.skip(
            "a full disk needs a small filesystem, and mounting a tmpfs is not permitted"
            f" here ({said}); run the tests as root"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _write_until_error(file: BinaryIO, chunk: bytes) -> OSError:
    try:
        while True:
            file.write(chunk)
            file.flush()
    except OSError as error:
        return error


def fill(disk: Path, leave: int, name: str = "filler") -> Path:
    """Write a filler file until the disk is full, then free ``leave`` bytes of it."""
    filler = disk / name
    chunk = b"\0" * 65536
    # Unbuffered: a buffered file would keep the part of a chunk the disk refused and fail
    # again when closed.
    with filler.open("wb", buffering=0) as file:
        full = _write_until_error(file, chunk)
    assert full.errno == errno.ENOSPC, full
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


# --------------------------------------------------------------------------- the producer


def event(account: str, id: str) -> dict[str, Any]:
    return {
        "id": id,
        "account": account,
        "meter": METER,
        "time": T0,
        "properties": {"app": "web", "padding": PADDING},
    }


def batch_events(number: int) -> list[dict[str, Any]]:
    """Batch ``number`` of the stream: new events, a few of the previous batch again
    (duplicates the producer re-sent), accounts mixed."""
    events = [
        event(ACCOUNTS[i % len(ACCOUNTS)], f"b{number}-e{i}") for i in range(EVENTS_PER_BATCH)
    ]
    if number > 0:
        events += [event(ACCOUNTS[i % len(ACCOUNTS)], f"b{number - 1}-e{i}") for i in range(3)]
    return events


def unique_per_account(batches: int) -> dict[str, int]:
    counts = dict.fromkeys(ACCOUNTS, 0)
    for i in range(EVENTS_PER_BATCH):
        counts[ACCOUNTS[i % len(ACCOUNTS)]] += batches
    return counts


class Producer:
    """Streams the batches over the raw protocol, one at a time, recording the acks."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.acked: dict[int, dict[str, Any]] = {}  # batch number -> its ack
        self.errors: list[tuple[dict[str, Any], int | None]] = []  # (error frame, close code)

    async def stream(self, numbers: range, *, until_error: bool) -> int | None:
        """Send batches ``numbers`` (skipping acknowledged ones) on one connection; the
        number of the batch that got an error instead of an ack, if any."""
        host, port = self.daemon.config.ingest.listen.host, self.daemon.config.ingest.listen.port
        headers = [(b"Authorization", f"Bearer {self.daemon.token('router')}".encode())]
        with trio.fail_after(TIMEOUT):
            async with open_websocket(
                host, port, "/v1/ingest", use_ssl=False, extra_headers=headers
            ) as ws:
                hello = msgpack.unpackb(await ws.get_message())
                assert hello["type"] == "hello", hello
                seq = 0
                for number in numbers:
                    if number in self.acked:
                        continue
                    seq += 1
                    events = batch_events(number)
                    frame = {"type": "batch", "seq": seq, "events": events}
                    await ws.send_message(msgpack.packb(frame))
                    answer = msgpack.unpackb(await ws.get_message())
                    if answer["type"] == "ack":
                        assert answer["seq"] == seq, answer
                        assert answer["rejected"] == [], answer
                        assert answer["accepted"] + answer["duplicates"] == len(events)
                        self.acked[number] = answer
                        continue
                    assert answer["type"] == "error", answer
                    code = None
                    try:
                        await ws.get_message()
                    except ConnectionClosed as closed:
                        code = closed.reason.code if closed.reason else None
                    self.errors.append((answer, code))
                    if until_error:
                        return number
                    pytest.fail(f"batch {number} failed after space was freed: {answer}")
        return None


# --------------------------------------------------------------------------- the API


def api(daemon: DaemonProcess, path: str, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    return httpx.get(f"{daemon.api_url}{path}", params=params, headers=headers, timeout=TIMEOUT)


def credit(daemon: DaemonProcess, account: str) -> httpx.Response:
    """``POST /v1/accounts/{account}/adjustments``: a credit of 1 (the billing database)."""
    return httpx.post(
        f"{daemon.api_url}/v1/accounts/{account}/adjustments",
        json={
            "meter": METER,
            "start": T0 - T0 % DAY_MS,
            "kind": "credit",
            "quantity": "1",
            "by": "support",
            "reason": "a full disk test",
        },
        headers={"Authorization": f"Bearer {daemon.config.api.admin_token}"},
        timeout=TIMEOUT,
    )


def usage(daemon: DaemonProcess, account: str) -> httpx.Response:
    """``GET /v1/accounts/{account}/usage`` of the meter, by day, around ``T0``."""
    range_ = {"from": T0 - DAY_MS, "to": T0 + DAY_MS}
    return api(daemon, f"/v1/accounts/{account}/usage", meter=METER, window="day", **range_)


def totals(daemon: DaemonProcess) -> dict[str, int]:
    """Each account's usage of the meter over the day around ``T0``, from the API."""
    found = {}
    for account in ACCOUNTS:
        response = usage(daemon, account)
        assert response.status_code == 200, response.text
        found[account] = sum(int(row["value"]) for row in response.json()["rows"])
    return found


async def wait_for_log(daemon: DaemonProcess, done: Callable[[], bool]) -> None:
    """Wait until ``done()`` holds, re-checking as the daemon's log grows."""
    with trio.fail_after(TIMEOUT):
        seen = -1
        while not done():
            assert daemon.process.poll() is None, daemon.lines[-20:]
            if len(daemon.lines) == seen:
                await trio.sleep(0.02)  # the log is read by a thread: look again soon
            seen = len(daemon.lines)


def restarts(daemon: DaemonProcess) -> dict[str, float]:
    """``meterd_actor_restarts_total`` of crashes, by supervisor, from ``/metrics``."""
    found = {}
    for line in httpx.get(f"{daemon.api_url}/metrics", timeout=TIMEOUT).text.splitlines():
        if line.startswith('meterd_actor_restarts_total{cause="exit"'):
            name, _, value = line.rpartition(" ")
            found[name.partition('supervisor="')[2].rstrip('"}')] = float(value)
    assert found, "no meterd_actor_restarts_total in /metrics"
    return found


def logged(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    entries = []
    for line in list(daemon.lines):
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                entries.append(entry)
    return entries


def integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


# --------------------------------------------------------------------------- the tests


async def stream_until_full(daemon: DaemonProcess, producer: Producer) -> int:
    """Stream until the store cannot commit; checks what the daemon says meanwhile."""
    failed = await producer.stream(range(1000), until_error=True)
    assert failed is not None, "1000 batches fit on a nearly full disk"
    assert producer.acked, "not one batch committed before the disk was full"
    assert all(number < failed for number in producer.acked)
    error, close = producer.errors[-1]
    assert (error["code"], close) == ("unavailable", 1011), (error, close)
    assert "database or disk is full" in error["message"], error
    assert daemon.process.poll() is None, "the daemon exited on a full disk"
    # Logged before the error frame was sent, but read from the daemon by a thread.
    await wait_for_log(daemon, lambda: bool(logged(daemon, "store_commit_failed")))
    failures = logged(daemon, "store_commit_failed")
    assert failures[-1]["path"] == str(daemon.config.store_path)
    assert failures[-1]["disk_full"] is True, failures[-1]
    assert failures[-1]["level"] == "error", failures[-1]
    assert "database or disk is full" in failures[-1]["error"], failures[-1]
    return failed


async def test_a_full_disk_is_refused_and_recovered_without_loss(disk: Path) -> None:
    with running_daemon(disk) as daemon:
        assert daemon.config.billing_path.parent == disk  # the billing database is there too
        filler = fill(disk, HEADROOM)
        producer = Producer(daemon)
        failed = await stream_until_full(daemon, producer)
        health = api(daemon, "/healthz")
        assert health.status_code == 503, health.text
        assert any(
            str(daemon.config.store_path) in problem and "full" in problem
            for problem in health.json()["problems"]
        ), health.text

        filler.unlink()
        # The idle writer probes: ready again by itself, before any batch is re-sent (a
        # load balancer reading /healthz would send none while it says 503).
        await wait_for_log(daemon, lambda: bool(logged(daemon, "store_commit_recovered")))
        assert api(daemon, "/healthz").status_code == 200
        # The producer re-sends every batch not acknowledged, from the one that failed.
        assert await producer.stream(range(failed + 5), until_error=False) is None
        assert sorted(producer.acked) == list(range(failed + 5))
        assert api(daemon, "/healthz").status_code == 200
        assert totals(daemon) == unique_per_account(failed + 5)
        assert daemon.process.poll() is None
    assert integrity(daemon.config.store_path) == "ok"


async def test_kill_9_on_a_full_disk_then_a_restart_loses_nothing(disk: Path) -> None:
    """``kill -9`` while the disk is full; a restart on the still full disk (it must start:
    the billing database beside the store must not be what fails, and the store answers
    ``unavailable``); ``kill -9`` again; space freed; a restart: nothing lost or doubled."""
    with running_daemon(disk) as daemon:
        filler = fill(disk, HEADROOM)
        producer = Producer(daemon)
        failed = await stream_until_full(daemon, producer)
        daemon.kill()
    with running_daemon(disk) as daemon:  # the disk is still full
        producer.daemon = daemon
        assert await producer.stream(range(failed + 3), until_error=True) is not None
        assert producer.errors[-1][0]["code"] == "unavailable", producer.errors[-1]
        assert api(daemon, "/healthz").status_code == 503
        daemon.kill()
    filler.unlink()
    with running_daemon(disk) as daemon:
        producer.daemon = daemon
        assert await producer.stream(range(failed + 3), until_error=False) is None
        assert totals(daemon) == unique_per_account(failed + 3)
        assert api(daemon, "/healthz").status_code == 200
    assert integrity(daemon.config.store_path) == "ok"
    assert integrity(daemon.config.billing_path) == "ok"


async def test_checkpoints_failing_on_a_full_disk_crash_no_actor(disk: Path) -> None:
    """Every account holds usage not yet checkpointed when the disk fills up for good (the
    WAL emptied into the database, then not a byte free: every commit needs new space).
    Hibernation and usage queries then cannot checkpoint: each actor logs it and stays
    up. (Before: each one crashed, restarted, replayed its journal and crashed again, and
    the restarts soon exhausted the ``meters`` supervisor and escalated.)"""
    with running_daemon(disk, checkpoint_interval=3600, idle_timeout=1.0) as daemon:
        producer = Producer(daemon)
        assert await producer.stream(range(6), until_error=False) is None
        connection = sqlite3.connect(daemon.config.store_path)
        try:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.close()
        assert busy == 0
        filler = fill(disk, 0)

        def failed_checkpoints() -> int:
            return len(logged(daemon, "checkpoint_failed")) + len(logged(daemon, "child_crashed"))

        # Each account tries to hibernate after idle_timeout, fails, and tries again.
        await wait_for_log(daemon, lambda: failed_checkpoints() >= 2 * len(ACCOUNTS))
        refused = usage(daemon, ACCOUNTS[0])
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable", refused.text
        assert "full" in refused.json()["error"]["message"], refused.text
        assert api(daemon, "/healthz").status_code == 503
        # The billing database beside the store: a correction cannot be written either.
        correction = credit(daemon, ACCOUNTS[0])
        assert correction.status_code == 503, correction.text
        assert correction.json()["error"]["code"] == "disk_full", correction.text
        assert logged(daemon, "child_crashed") == []
        assert set(restarts(daemon).values()) == {0.0}, restarts(daemon)
        failure = logged(daemon, "checkpoint_failed")[0]
        assert failure["account"] in ACCOUNTS, failure
        assert "full" in failure["error"], failure

        filler.unlink()
        assert await producer.stream(range(8), until_error=False) is None
        assert totals(daemon) == unique_per_account(8)
        assert api(daemon, "/healthz").status_code == 200
        assert set(restarts(daemon).values()) == {0.0}, restarts(daemon)
    assert integrity(daemon.config.store_path) == "ok"
