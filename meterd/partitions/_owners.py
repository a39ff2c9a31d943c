"""What the gateway's other parts may ask of the owner processes (docs/partitions.md).

The gateway's links to the owners (:mod:`._gateway`) implement :class:`Owners`; the API
(:mod:`meterd.api.gateway`) and the console only see this protocol, so they answer the
same whether the shards are in owner processes on this host or (issue 16) elsewhere.
"""

from __future__ import annotations

from typing import Any, Protocol

from meterd.config import PartitionsConfig

from ._messages import TreeSnapshot

__all__ = ["OwnerUnavailable", "Owners"]


class OwnerUnavailable(Exception):
    """The owner of a shard did not answer: it is down, restarting, or timed out.

    ``shard`` is the shard asked about, ``owner`` its owner's number, ``reason`` what
    happened, in words for an operator."""

    def __init__(self, shard: int, owner: int, reason: str) -> None:
        super().__init__(f"shard {shard} (owner {owner}) is unavailable: {reason}")
        self.shard = shard
        self.owner = owner
        self.reason = reason


class Owners(Protocol):
    """The owner processes, as the gateway's API sees them."""

    @property
    def partitions(self) -> PartitionsConfig:
        """The layout (count, shard size, owners)."""
        ...

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Send a :class:`~._messages.Query` to the owner of ``shard``; the answer's
        ``value``. Raises :class:`OwnerUnavailable` when the owner does not answer within
        ``timeout`` seconds or is down, and ``RuntimeError`` with the owner's words when the
        answer is an error."""
        ...

    async def trees(self, limit: int, total: int, timeout: float) -> list[TreeSnapshot | None]:
        """Every owner's supervision tree (:class:`~._messages.TreeSnapshot`), by owner
        number; None for an owner that did not answer within ``timeout`` seconds."""
        ...

    def pids(self) -> list[int | None]:
        """Each owner process's pid, by owner number (None while it is not running)."""
        ...
