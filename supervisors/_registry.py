"""Registry: unique names for actors (Elixir's ``Registry`` with ``keys: :unique``).

The registry is built on the actors' public API only (:meth:`ActorRef.monitor`,
the sends), as Elixir's is built on links and monitors: nobody has to tell it that
an actor ended, and it knows nothing of supervisors.

Rules:

* :meth:`Registry.register` puts an actor under a key. A key held by a live actor
  cannot be taken (:class:`AlreadyStarted`, carrying that actor's ref), nor one
  reserved for another owner (below).
* The registry monitors each actor it holds. When one ends, its key is removed at
  once, in the monitor's notice (Elixir's registry removes a process's keys when
  it exits) -- unless the actor was registered for an ``owner``: the key then
  stays *reserved* for that owner, without an actor, until the owner registers
  the next actor under it or gives it up with :meth:`Registry.unregister`. A
  lookup never returns an actor that has ended, not even before that notice
  (while its ``terminate`` runs).
* A handle from :meth:`Registry.ref` (a :class:`NameRef`) reaches whatever actor
  holds the key when it is used. While the key is reserved without an actor, a
  call through it waits (within its timeout) for the next one; a call still
  queued, unread, in an actor that ended is sent again to the next one
  (``ActorExited.delivered`` is False for it); a key nobody holds raises
  :class:`NoSuchActor`.

Supervisors use owners so that names outlive incarnations: an actor child started
with ``actor_spec(..., name=(registry, key))`` is registered for its child record
*before* its ``init`` runs (as ``gen_server`` registers before ``init``: two
tasks racing to start one name never both get an actor), and the supervisor gives
the key up when it will not start the child again (not restarted, removed, or the
supervisor stopped). While it restarts the child, calls wait for the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import trio

from ._actor import ActorRef, Merge, Monitor
from ._errors import ActorExited, AlreadyStarted, CallTimeout, NoSuchActor
from ._exit import Exit

Req = TypeVar("Req")
Rep = TypeVar("Rep")


class _Slot:
    """One key: its actor, or the owner it is reserved for while it has none.

    It is also the callback of the monitor on its actor (one object less per name).
    """

    __slots__ = ("key", "monitor", "owner", "ref", "registry", "waiters")

    def __init__(self, registry: Registry, key: Hashable, owner: object) -> None:
        self.registry = registry
        self.key = key
        self.owner = owner
        self.ref: ActorRef[Any, Any] | None = None
        self.monitor: Monitor | None = None
        self.waiters: trio.Event | None = None

    def __call__(self, monitor: Monitor, exit: Exit) -> None:
        """The monitor's notice: the actor of this key ended."""
        if monitor is not self.monitor:
            return  # an earlier actor of this key, already replaced
        self.monitor = None
        self.ref = None
        if self.owner is None:
            self.registry._drop(self)

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, None
        if waiters is not None:
            waiters.set()


class Registry:
    """Unique names -> actors. Names are any hashable keys. See the module doc."""

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._slots: dict[Hashable, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held: by a live actor, or reserved for its owner."""
        return key in self._slots

    def keys(self) -> Iterator[Hashable]:
        return iter(self._slots)

    def whereis(self, key: Hashable) -> ActorRef[Any, Any] | None:
        """The live actor under ``key``, or None (also while it is reserved without one)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        ref = slot.ref
        return ref if ref is not None and ref.alive else None

    def ref(self, key: Hashable) -> NameRef[Any, Any]:
        """A handle that reaches whatever actor holds ``key`` when it is used."""
        return NameRef(self, key)

    def restarting(self, key: Hashable) -> bool:
        """True while ``key`` is held but no actor serves it yet (reserved without one,
        or its actor's ``init`` still runs)."""
        slot = self._slots.get(key)
        return slot is not None and (slot.ref is None or not slot.ref.ready)

    def register(self, key: Hashable, ref: ActorRef[Any, Any], *, owner: object = None) -> None:
        """Put the actor ``ref`` under ``key`` (see the module doc for ``owner``).

        Raises :class:`AlreadyStarted` if a live actor holds ``key`` or it is reserved
        for another owner, :class:`NoSuchActor` if ``ref`` has ended. Calls waiting
        for ``key`` go on to this actor (mail sent while its ``init`` runs waits).
        """
        if not ref.alive:
            raise NoSuchActor(ref)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self, key, owner)
        else:
            held = slot.ref
            if held is not None and held.alive:
                raise AlreadyStarted(key, held)
            if slot.owner is not owner:
                raise AlreadyStarted(key, None)
            if slot.monitor is not None:  # it ended, and its notice is still to come
                slot.monitor.cancel()
        slot.ref = ref
        slot.monitor = ref.monitor(slot)
        slot.wake()

    def unregister(self, key: Hashable, owner: object = None) -> None:
        """Give ``key`` up if it is held for ``owner`` (None: registered without one).

        Its actor, if still running, runs on without the name; calls waiting for the
        key raise :class:`NoSuchActor`. A key held for someone else is left alone.
        """
        slot = self._slots.get(key)
        if slot is not None and slot.owner is owner:
            if slot.monitor is not None:
                slot.monitor.cancel()
                slot.monitor = None
            slot.ref = None
            self._drop(slot)

    async def wait_for(self, key: Hashable) -> ActorRef[Any, Any] | None:
        """The live actor under ``key``, once there is one; None if nobody holds ``key``
        (or it is given up meanwhile)."""
        while True:
            slot = self._slots.get(key)
            if slot is None:
                return None
            ref = slot.ref
            if ref is not None and ref.alive:
                return ref
            if slot.waiters is None:
                slot.waiters = trio.Event()
            await slot.waiters.wait()

    def _drop(self, slot: _Slot) -> None:
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        slot.wake()

    def __repr__(self) -> str:
        return f"<Registry {self.name!r}: {len(self._slots)} names>"


class NameRef(Generic[Req, Rep]):
    """A handle to whatever actor is registered under ``key`` in ``registry``.

    It has the sends of an :class:`ActorRef` and resolves the name at each use (see
    the module doc): while the key is reserved without an actor a call waits for
    the next one, within its timeout; a call queued in an actor that ended before
    reading it is sent again to the next one; a name nobody holds raises
    :class:`NoSuchActor` at once. Casts and sends reach the actor holding the key
    now, or are dropped if none does.
    """

    __slots__ = ("key", "registry")

    def __init__(self, registry: Registry, key: Hashable) -> None:
        self.registry = registry
        self.key = key

    @property
    def alive(self) -> bool:
        return self.registry.whereis(self.key) is not None

    @property
    def mailbox_depth(self) -> int:
        return self._now().mailbox_depth

    def _now(self) -> ActorRef[Req, Rep]:
        ref = self.registry.whereis(self.key)
        if ref is None:
            raise NoSuchActor(self)
        return ref

    async def call(self, request: Req, timeout: float = 5.0) -> Rep:
        """Call the actor holding the name (see the class doc)."""
        deadline = trio.current_time() + timeout
        while True:
            ref: ActorRef[Req, Rep] | None = self.registry.whereis(self.key)
            if ref is None:
                with trio.move_on_at(deadline) as waiting:
                    ref = await self.registry.wait_for(self.key)
                if waiting.cancelled_caught:
                    raise CallTimeout(self, timeout)
                if ref is None:
                    raise NoSuchActor(self)
            try:
                return await ref.call(request, deadline - trio.current_time())
            except ActorExited as error:
                if error.delivered:
                    raise
            except CallTimeout:
                raise CallTimeout(self, timeout) from None

    async def cast(self, request: Req) -> None:
        ref = self.registry.whereis(self.key)
        if ref is not None:
            await ref.cast(request)

    async def send(self, message: Any) -> None:
        ref = self.registry.whereis(self.key)
        if ref is not None:
            await ref.send(message)

    def try_cast(self, request: Req) -> bool:
        ref = self.registry.whereis(self.key)
        return ref is not None and ref.try_cast(request)

    def try_send(self, message: Any, merge: Merge | None = None) -> bool:
        ref = self.registry.whereis(self.key)
        return ref is not None and ref.try_send(message, merge)

    def monitor(self, callback: Callable[[Monitor, Exit], None] | None = None) -> Monitor:
        """Monitor the actor holding the name now (:class:`NoSuchActor` if none)."""
        return self._now().monitor(callback)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NameRef) and (other.registry, other.key) == (
            self.registry,
            self.key,
        )

    def __hash__(self) -> int:
        return hash((id(self.registry), self.key))

    def __repr__(self) -> str:
        return f"<NameRef {self.key!r}>"
