"""Restart intensity: OTP's ``add_restart``.

A supervisor keeps the times of its recent restarts. Each restart adds the
current time and forgets restarts older than ``now - max_seconds`` (a restart
exactly ``max_seconds`` ago still counts, as in OTP). If more than
``max_restarts`` remain, the supervisor gives up: it terminates its children and
exits, and its parent handles that as the crash of a child (escalation).

The count is per supervisor, across all its children (triotp counts per child,
which lets a supervisor with many children loop forever).
"""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    """The restart history of one supervisor."""

    __slots__ = ("_restarts", "max_restarts", "max_seconds")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._restarts: deque[float] = deque()

    def add_restart(self, now: float) -> bool:
        """Record a restart at ``now``; False if that exceeds the intensity (give up)."""
        threshold = now - self.max_seconds
        restarts = self._restarts
        while restarts and restarts[0] < threshold:
            restarts.popleft()
        restarts.append(now)
        return len(restarts) <= self.max_restarts

    def would_exceed(self, now: float) -> bool:
        """Whether a restart at ``now`` would exceed the intensity (nothing is recorded)."""
        threshold = now - self.max_seconds
        recent = sum(1 for at in self._restarts if at >= threshold)
        return recent + 1 > self.max_restarts

    def __len__(self) -> int:
        return len(self._restarts)
