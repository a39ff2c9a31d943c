"""How gateway and owners reach each other: one interface, a Unix-socket implementation.

A :class:`Channel` carries :mod:`._messages` both ways between two peers: ``send`` one
message, ``receive`` the next, ``aclose``. A :class:`Transport` makes channels: an owner
``serve``s at an address, the gateway ``connect``s to it. The gateway's and the owners'
logic use these two protocols only, so the multi-node issue (16) can put NATS JetStream
behind them without touching either.

:class:`UnixTransport` is the local one: a stream socket at a path, each message one
frame, a 4-byte big-endian length followed by the message's msgpack bytes
(:func:`._messages.encode`). Rules:

* ``send`` may be called from several tasks at once: frames are never interleaved (a
  lock keeps each whole). It waits while the peer does not read (the socket's buffer is
  full): backpressure reaches the sender.
* ``receive`` is for one task at a time (the channel's reader). It raises
  :class:`ChannelClosed` when the peer closed between two frames, and
  :class:`FrameError` (naming the peer and what is wrong) for a frame cut short by the
  close, a frame over ``max_frame`` bytes (64 MiB: a slice of a 10,000-event batch is
  ~1 MiB), or bytes that are not a message; the channel is then closed, since after a bad
  frame the stream cannot be trusted.
* The socket file is created by ``serve`` (a stale one left by a dead owner is replaced)
  with mode 0600, and removed when it stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
import structlog
import trio

from ._messages import Message, decode, encode

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Channel",
    "ChannelClosed",
    "FrameError",
    "StreamChannel",
    "Transport",
    "UnixTransport",
]

log = structlog.get_logger("meterd.partitions")

DEFAULT_MAX_FRAME: Final = 64 * 2**20
_HEADER: Final = 4


class ChannelClosed(Exception):
    """The channel is closed: by the peer between two messages, or on this side (after a
    frame error, or :meth:`Channel.aclose`) while a send or a receive was under way."""


class FrameError(Exception):
    """A frame that is not a message: the channel is closed."""


class Channel(Protocol):
    """A two-way stream of messages with one peer."""

    @property
    def peer(self) -> str: ...
    async def send(self, message: Message) -> None: ...
    async def receive(self) -> Message: ...
    async def aclose(self) -> None: ...


Handler = Callable[["Channel"], Awaitable[None]]


class Transport(Protocol):
    """Makes channels: ``serve`` at an address (owners), ``connect`` to one (the gateway)."""

    async def connect(self, address: str) -> Channel: ...
    async def serve(
        self, address: str, handler: Handler, *, task_status: trio.TaskStatus[Any] = ...
    ) -> None: ...


class StreamChannel:
    """A :class:`Channel` over a Trio byte stream, in length-prefixed frames."""

    def __init__(
        self, stream: trio.abc.Stream, peer: str, *, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        self._stream = stream
        self._peer = peer
        self._max_frame = max_frame
        self._send_lock = trio.Lock()
        self._buffer = bytearray()
        self._closed = False

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, message: Message) -> None:
        body = encode(message)
        if len(body) > self._max_frame:
            raise FrameError(
                f"a {type(message).__name__} of {len(body):,} bytes for {self._peer} is over "
                f"the max_frame of {self._max_frame:,} bytes; split it (fewer events per slice)"
            )
        frame = len(body).to_bytes(_HEADER, "big") + body
        async with self._send_lock:
            if self._closed:
                raise ChannelClosed(f"the channel with {self._peer} is closed")
            try:
                await self._stream.send_all(frame)
            except trio.ClosedResourceError:  # closed on this side during the send
                raise ChannelClosed(f"the channel with {self._peer} is closed") from None

    async def receive(self) -> Message:
        header = await self._read(_HEADER, between_frames=True)
        length = int.from_bytes(header, "big")
        if length > self._max_frame:
            await self._fail(
                f"a frame of {length:,} bytes is over the max_frame of {self._max_frame:,} bytes"
            )
        body = await self._read(length, between_frames=False)
        try:
            return decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            await self._fail(f"a frame of {length:,} bytes is not a message: {error}")
            raise AssertionError("unreachable") from error

    async def _read(self, count: int, *, between_frames: bool) -> bytes:
        buffer = self._buffer
        while len(buffer) < count:
            if self._closed:
                raise ChannelClosed(f"the channel with {self._peer} is closed")
            try:
                chunk = await self._stream.receive_some(max(65_536, count - len(buffer)))
            except trio.ClosedResourceError:  # closed on this side during the receive
                raise ChannelClosed(f"the channel with {self._peer} is closed") from None
            if not chunk:
                if between_frames and not buffer:
                    await self.aclose()
                    raise ChannelClosed(f"{self._peer} closed the channel")
                await self._fail(f"the channel closed {len(buffer)} bytes into a frame")
            buffer += chunk
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    async def _fail(self, why: str) -> None:
        await self.aclose()
        raise FrameError(f"from {self._peer}: {why}; the channel is closed")

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()


class UnixTransport:
    """Channels over Unix stream sockets (see the module doc)."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame

    async def connect(self, address: str) -> Channel:
        try:
            stream = await trio.open_unix_socket(address)
        except OSError as error:
            raise ConnectionError(
                f"cannot connect to the owner at {address}: {error.strerror or error}; "
                "is it running (its ready line names the socket)?"
            ) from error
        return StreamChannel(stream, address, max_frame=self.max_frame)

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept channels at ``address`` and run ``handler(channel)`` for each, in a task
        of its own, until cancelled; the channel is closed when its handler returns."""
        _remove_stale_socket(Path(address))
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(address)
            os.chmod(address, 0o600)
            sock.listen(64)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started(address)
                while True:
                    stream = await listener.accept()
                    channel = StreamChannel(stream, address, max_frame=self.max_frame)
                    nursery.start_soon(self._handle, handler, channel)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)

    @staticmethod
    async def _handle(handler: Handler, channel: StreamChannel) -> None:
        try:
            await handler(channel)
        except (ChannelClosed, FrameError) as error:
            log.warning("channel_ended", peer=channel.peer, error=str(error))
        finally:
            await channel.aclose()


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by an owner that died; anything else there is an error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            f"{path} exists and is not a socket; the owner will not replace it: "
            "choose another socket path"
        )
    path.unlink()
