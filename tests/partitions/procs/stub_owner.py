"""A stand-in partition owner: ``stub_owner.py SOCKET NAME SHARD...``.

It serves :class:`meterd.partitions.UnixTransport` at SOCKET, says ``hello``, answers each
slice (and each batch's ``slices`` for its shards) with verdicts (every event accepted) and
each tree request with a snapshot; once serving it says it is ready (the socket's path as
its ready line) and prints ``up <pid>`` on stdout. The shape a real owner will have,
without its store.
"""

from __future__ import annotations

import os
import sys

import trio

import supervisors as sv
from meterd.partitions import (
    Channel,
    ChannelClosed,
    Hello,
    Slice,
    Slices,
    TreeRequest,
    TreeSnapshot,
    UnixTransport,
    Verdicts,
)


async def main(socket_path: str, name: str, shards: list[str]) -> None:
    owned = [int(s) for s in shards]

    async def handle(channel: Channel) -> None:
        await channel.send(Hello(name, os.getpid(), owned))
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                return
            if isinstance(message, Slice):
                accepted = len(message.events)
                await channel.send(Verdicts(message.batch, message.shard, accepted, 0))
            elif isinstance(message, Slices):  # one message per owner per batch (version 3)
                accepted = sum(len(part.events) for part in message.parts)
                await channel.send(Verdicts(message.batch, message.shard, accepted, 0))
            elif isinstance(message, TreeRequest):
                tree = {"name": name, "kind": "supervisor", "children": []}
                await channel.send(TreeSnapshot(message.id, name, os.getpid(), tree))

    async with trio.open_nursery() as nursery:
        await nursery.start(UnixTransport().serve, socket_path, handle)
        sv.notify_ready(socket_path)
        sys.stdout.write(f"up {os.getpid()}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
