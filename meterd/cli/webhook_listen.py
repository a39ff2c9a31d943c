"""``meterd webhook-listen``: a local receiver of alert deliveries that checks each one's
signature and prints it (docs/alerts.md): to see a signed delivery arrive."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import click

TOLERANCE_S = 300  # a signature older than this is refused (a replayed request)


def check_signature(secret: str, header: str, body: bytes, now: float) -> str | None:
    """None when ``header`` (``t=...,v1=...``) signs ``body`` with ``secret`` recently
    enough, else why not."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return "no valid Meterd-Signature header"
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, given):
        return "signature does not match (wrong secret, or the body was changed)"
    if abs(now - t) > TOLERANCE_S:
        return f"signed {int(now - t)} s ago: older than {TOLERANCE_S} s"
    return None


@click.command("webhook-listen")
@click.option("--listen", default="127.0.0.1:9000", show_default=True, help="HOST:PORT.")
@click.option(
    "--secret-env",
    default="METERD_WEBHOOK_SECRET",
    show_default=True,
    help="The environment variable holding the webhook's secret.",
)
def webhook_listen(listen: str, secret_env: str) -> None:
    """Receive alert deliveries, check their signature, print them (Ctrl-C stops)."""
    secret = os.environ.get(secret_env)
    if not secret:
        click.echo(f"webhook-listen: set {secret_env} to the webhook's secret", err=True)
        sys.exit(2)
    key: str = secret
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            problem = check_signature(
                key, self.headers.get("Meterd-Signature", ""), body, time.time()
            )
            self.send_response(401 if problem else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            event_id = self.headers.get("Meterd-Event-Id", "?")
            verdict = f"REFUSED: {problem}" if problem else "signature ok"
            click.echo(f"{event_id}  {verdict}\n  {body.decode('utf-8', 'replace')}")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer((host or "127.0.0.1", int(port)), Handler)
    click.echo(f"listening on http://{host or '127.0.0.1'}:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
