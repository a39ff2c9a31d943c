"""A websocket closed from both ends at once must not end the API server.

hypercorn 0.18's connection sends EOF (``_close``) outside its send lock; a close reply sent
at that moment met ``trio.BusyResourceError``, which ended ``serve`` and every request in
flight (seen as a live-usage websocket whose next client hung for a minute while the API
child restarted). ``meterd.api.server`` installs a connection class that treats it as the
connection closing. These tests make the two sends collide on a real socket pair.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

import meterd.api.server  # noqa: F401 - installs the connection class


class _Protocol:
    def __init__(self) -> None:
        self.events: list[object] = []

    async def handle(self, event: object) -> None:
        self.events.append(event)


async def _collide(cls: type[TCPServer]) -> list[object]:
    """Send data on ``cls``'s connection while another task holds the stream's send side
    outside the send lock (as ``_close`` does across a checkpoint while sending EOF; here
    a send the peer does not read, so it holds it for as long as the test needs); the
    events its protocol saw."""
    left, right = await _sockets()
    server: Any = cls.__new__(cls)
    server.stream = left
    server.send_lock = trio.Lock()
    server.config = Config()
    protocol = _Protocol()
    server.protocol = protocol
    failed: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, b"x" * 50_000_000)  # blocks: nobody reads
        await trio.testing.wait_all_tasks_blocked()
        try:
            await server.protocol_send(RawData(data=b"\x88\x02\x03\xe8"))  # a close frame
        except trio.BusyResourceError as error:
            failed = error
        nursery.cancel_scope.cancel()
    await left.aclose()
    await right.aclose()
    if failed is not None:
        raise failed
    return protocol.events


async def _sockets() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_the_installed_connection_treats_the_collision_as_a_close() -> None:
    installed = hypercorn_run.TCPServer  # type: ignore[attr-defined]  # what serve() builds
    assert installed is not TCPServer
    events = await _collide(installed)
    assert any(isinstance(e, Closed) for e in events)


async def test_hypercorns_own_connection_raises_there() -> None:
    """The race is real in the pinned hypercorn (if this stops failing there, drop the fix)."""
    with pytest.raises(trio.BusyResourceError):
        await _collide(TCPServer)
