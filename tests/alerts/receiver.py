"""A real local HTTP receiver for the delivery tests: records each request, checks its
signature, and answers as the test says (fail the first N, be down, dedupe by id)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    id: str
    signature: str
    body: bytes
    valid: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, header: str, body: bytes) -> bool:
    """A receiver's check of ``Meterd-Signature`` (protocol.md §4)."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    mac = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["v1"])


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0  # answer 500 to this many requests first
    fail_rate: float = 0.0  # and to this share of the others, at random
    rng: random.Random = field(default_factory=random.Random)
    port: int = 0
    received: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None
    done: bool = False  # set by a test when nothing more is to come

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def reserve(self) -> None:
        """Choose a free port without listening on it (the receiver is 'down')."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (kill -9): no request
                    return
                signature = self.headers.get("Meterd-Signature", "")
                with receiver.changed:
                    failing = len(receiver.received) < receiver.fail_first
                    failing = failing or receiver.rng.random() < receiver.fail_rate
                    status = 500 if failing else 200
                    receiver.received.append(
                        Received(
                            self.headers.get("Meterd-Event-Id", ""),
                            signature,
                            body,
                            verify(receiver.secret, signature, body),
                            status,
                        )
                    )
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, done: Callable[[Receiver], bool], timeout: float = 60) -> bool:
        """Block (a thread) until ``done(self)`` holds or ``timeout`` passes."""
        with self.changed:
            return self.changed.wait_for(lambda: done(self), timeout)

    def delivered_ids(self) -> set[str]:
        """Ids of the requests answered 2xx (what a receiver deduping by id keeps)."""
        with self.changed:
            return {r.id for r in self.received if r.status == 200}
