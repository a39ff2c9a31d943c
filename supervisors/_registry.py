"""Registry: unique names for actors (Elixir's ``Registry`` with ``keys: :unique``).

* A name is taken when an actor starting with it is created, *before* its
  ``init`` runs, as ``gen_server`` registers before ``init``. Two tasks racing to
  start the same name therefore never both get an actor: the second start fails
  at once with :class:`AlreadyStarted` carrying the first actor's ref.
* The name is released when the actor ends, unless its supervisor is about to
  restart it: then the name stays reserved for the child, and calls made through
  :meth:`Registry.ref` wait for the new incarnation (names outlive incarnations).
* If the actor's start fails, the name is released.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from ._errors import AlreadyStarted, NoSuchActor

if TYPE_CHECKING:
    from ._actor import ActorRef, GenServer, NameRef


class _Slot:
    """One name: its live actor, or the owner that reserved it during a restart."""

    __slots__ = ("actor", "owner", "waiters")

    def __init__(self, owner: object) -> None:
        self.actor: GenServer[Any, Any] | None = None
        self.owner = owner
        self.waiters: trio.Event | None = None


class Registry:
    """Unique names -> actors. Names are any hashable keys."""

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._slots: dict[Hashable, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> Iterator[Hashable]:
        return iter(self._slots)

    def whereis(self, key: Hashable) -> ActorRef[Any, Any] | None:
        """The live actor under ``key``, or None (also while it is being restarted)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        actor = slot.actor
        return actor.ref if actor is not None and actor.sv_alive else None

    def ref(self, key: Hashable) -> NameRef[Any, Any]:
        """A handle that reaches whatever actor holds ``key`` when it is used."""
        from ._actor import NameRef

        return NameRef(self, key)

    def restarting(self, key: Hashable) -> bool:
        """True while ``key`` is held but no incarnation serves it yet (between
        incarnations, or while the new one's ``init`` runs)."""
        slot = self._slots.get(key)
        return slot is not None and (slot.actor is None or not slot.actor.sv_ready)

    # ---- used by actors and supervisors ----------------------------------------

    def _sv_lookup(self, key: Hashable) -> GenServer[Any, Any] | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        actor = slot.actor
        return actor if actor is not None and actor.sv_alive else None

    async def _sv_wait_live(self, key: Hashable, target: object) -> GenServer[Any, Any]:
        while True:
            slot = self._slots.get(key)
            if slot is None:
                raise NoSuchActor(target)
            actor = slot.actor
            if actor is not None and actor.sv_alive:
                return actor
            if slot.waiters is None:
                slot.waiters = trio.Event()
            await slot.waiters.wait()

    def _sv_claim(self, key: Hashable, owner: object, actor: GenServer[Any, Any]) -> None:
        """Take ``key`` for ``actor``; a slot reserved by the same ``owner`` is refilled."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(owner)
        elif slot.owner is not owner or (slot.actor is not None and slot.actor.sv_alive):
            existing = slot.actor.ref if slot.actor is not None else None
            raise AlreadyStarted(key, existing)
        slot.actor = actor

    def _sv_filled(self, key: Hashable) -> None:
        """The actor under ``key`` is ready (its ``init`` returned): wake waiting callers."""
        slot = self._slots.get(key)
        if slot is not None and slot.waiters is not None:
            slot.waiters.set()
            slot.waiters = None

    def _sv_vacate(self, key: Hashable, owner: object, actor: GenServer[Any, Any]) -> None:
        """``actor`` ended but ``owner`` will restart it: keep the name reserved."""
        slot = self._slots.get(key)
        if slot is not None and slot.owner is owner and slot.actor is actor:
            slot.actor = None

    def _sv_release(self, key: Hashable, owner: object) -> None:
        """Give the name up; callers waiting for it get NoSuchActor."""
        slot = self._slots.get(key)
        if slot is not None and slot.owner is owner:
            del self._slots[key]
            if slot.waiters is not None:
                slot.waiters.set()
