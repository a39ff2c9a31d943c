"""meterd's groundwork for cluster mode: NATS JetStream driven from Trio (docs/cluster.md).

Not wired into the daemon yet. :func:`open_bridge` / :class:`AsyncioBridge`: one asyncio loop in
its own thread, called from Trio (cancellation, closing and exceptions handled across it).
"""

from meterd.cluster._bridge import AsyncioBridge, BridgeClosed, open_bridge

__all__ = ["AsyncioBridge", "BridgeClosed", "open_bridge"]
