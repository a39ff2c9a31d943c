"""``kill -9`` of the real daemon at random moments around crossings (protocol.md §4).

Each round starts ``meterd run`` on the same store, sends the whole stream again with
``meterd send`` (re-sending is safe: duplicates) and ``SIGKILL``s the daemon at a random
point: as soon as it listens, once a crossing is logged as durable, or once the receiver
has seen a random number of requests. The receiver (a real local HTTP server) answers 500
to a fifth of the requests at random. A last round runs to the end. Then:

* every crossing the stream implies was delivered (a 2xx) and signed correctly;
* each id is one crossing (every request with that id carried the same bytes), and ids are
  exactly the ones derived from (alert, account, period);
* never a crossing for a rule the stream did not reach, and each crossing names the event
  that took the usage from below the threshold to it.

Nothing waits on the clock: every wait is on a log line, the receiver's requests or an
exit, under a generous timeout. ``ROUNDS`` kills by default; the slow variant more.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest

from meterd.alerts import AlertRule
from meterd.alerts._eval import month_of
from tests.system.test_kill9 import write_config

from .receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-kill9-0123456789"
ACCOUNTS = ("a0", "a1", "a2", "a3")
THRESHOLDS = {"three": 3, "seven": 7, "twelve": 12, "never": 1000}
EVENTS_PER_ACCOUNT = 15


def _alerts_toml(url: str) -> str:
    out = [
        "",
        "[[webhooks]]",
        'name = "hook"',
        f'url = "{url}"',
        f'secret = "{SECRET}"',
    ]
    for name, value in THRESHOLDS.items():
        out += [
            "",
            "[[alerts]]",
            f'name = "{name}"',
            'meter = "dyno.seconds"',
            f'threshold = "{value}"',
            'webhook = "hook"',
        ]
    return "\n".join(out) + "\n"


def _stream(where: Path, start: int) -> Path:
    path = where / "events.jsonl"
    lines = []
    for n in range(EVENTS_PER_ACCOUNT):  # interleaved: accounts cross in turns
        for account in ACCOUNTS:
            lines.append(
                json.dumps(
                    {
                        "id": f"{account}-{n}",
                        "account": account,
                        "meter": "dyno.seconds",
                        "quantity": 1,
                        "time": start + n * 1000,
                        "properties": {"size": "std-1x", "app": "web"},
                    }
                )
            )
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<exit>")
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: any(text in line or line == "<exit>" for line in self.lines), timeout
            )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.thread.join(10)


def _seen(receiver: Receiver, k: int) -> bool:
    return len(receiver.received) >= k or receiver.done


def _note_exit(sender: subprocess.Popen[str], daemon: Daemon, receiver: Receiver) -> None:
    sender.wait()
    with daemon.changed:
        daemon.lines.append("<exit>")
        daemon.changed.notify_all()
    with receiver.changed:
        receiver.done = True
        receiver.changed.notify_all()


def _send(config: Path, events: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meterd", "send", str(events), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "METERD_PRODUCER_TOKEN": "dev-platform-token"},
    )


def _campaign(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    start = (time.time_ns() // 1_000_000) - 3_600_000  # an hour ago: accepted, this month
    period = "{:04d}-{:02d}".format(*month_of(start))
    events = _stream(tmp_path, start)
    receiver = Receiver(SECRET, fail_rate=0.2, rng=rng).start()
    try:
        config = write_config(tmp_path / "config.toml", tmp_path / "store.sqlite3")
        with config.open("a") as out:
            out.write(_alerts_toml(receiver.url))
        for round_ in range(rounds + 1):
            daemon = Daemon(config)
            receiver.done = False
            try:
                assert daemon.wait_for('"listening"'), "".join(daemon.lines[-20:])
                sender = _send(config, events)
                last = round_ == rounds
                if last:
                    assert sender.wait(120) == 0
                    receiver.wait_for(lambda r: len(r.delivered_ids()) >= len(ACCOUNTS) * 3, 120)
                    daemon.process.terminate()
                    assert daemon.process.wait(60) == 0, "".join(daemon.lines[-20:])
                    break
                # when the sender is done, nothing more may come: stop waiting then too
                threading.Thread(target=_note_exit, args=(sender, daemon, receiver)).start()
                moment = rng.choice(["listening", "crossed", "requests"])
                if moment == "crossed":
                    daemon.wait_for('"alerts_crossed"', 30)
                elif moment == "requests":
                    k = len(receiver.received) + rng.randint(1, 4)
                    receiver.wait_for(partial(_seen, k=k), 30)
                daemon.kill()
                sender.kill()
                sender.wait()
            finally:
                if daemon.process.poll() is None:
                    daemon.kill()
    finally:
        receiver.stop()
    _check(receiver, period, start, f"seed {seed}")


def _check(receiver: Receiver, period: str, start: int, context: str) -> None:
    rules = {
        name: AlertRule(name, "dyno.seconds", "hook", threshold=Decimal(value))
        for name, value in THRESHOLDS.items()
    }
    expected = {
        rules[name].crossing_id(account, period): (name, account)
        for name in ("three", "seven", "twelve")
        for account in ACCOUNTS
    }
    assert all(r.valid for r in receiver.received), context
    bodies: dict[str, set[bytes]] = {}
    for r in receiver.received:
        bodies.setdefault(r.id, set()).add(r.body)
    assert all(len(b) == 1 for b in bodies.values()), context  # one id, one crossing
    assert set(bodies) == set(expected), context  # none for "never", none unknown
    assert receiver.delivered_ids() == set(expected), context
    for crossing_id, (name, account) in expected.items():
        [body] = bodies[crossing_id]
        got = json.loads(body)
        assert (got["alert"], got["account"], got["period"]) == (name, account, period)
        threshold = THRESHOLDS[name]
        # quantity 1 per event: the crossing event is the threshold-th one, value exactly it
        assert got["value"] == str(threshold), (context, got)
        assert got["crossed_at"] == start + (threshold - 1) * 1000  # the event that crossed


ROUNDS = 2


def test_kill9_around_crossings_delivers_each_crossing_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("METERD_KILL9_SEED", random.randrange(1 << 30)))
    _campaign(tmp_path, ROUNDS, seed)


@pytest.mark.slow
def test_kill9_around_crossings_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("METERD_KILL9_SEED", random.randrange(1 << 30)))
    _campaign(tmp_path, int(os.environ.get("METERD_SOAK", "25")), seed)
