"""A Trio ↔ asyncio bridge: one asyncio event loop in its own thread, driven from Trio.

nats-py is asyncio-only. Rather than trio-asyncio (which patches ``asyncio`` process-wide and
measured slower here), meterd runs one asyncio loop in a daemon thread per :class:`AsyncioBridge`:

* A Trio task calls :meth:`AsyncioBridge.call` with a coroutine *function*; the coroutine is
  created and started as an asyncio task inside the loop (``loop.call_soon_threadsafe``), and its
  outcome comes back to Trio through ``TrioToken.run_sync_soon``. No Trio code runs in the loop
  thread and no asyncio code in Trio's.
* **Exceptions cross with their type**: the caller gets the very exception object the coroutine
  raised (``nats.errors.TimeoutError`` stays that, a ``KeyError`` stays a ``KeyError``).
* **Cancellation**: a cancelled Trio caller cancels its asyncio task and waits (shielded, at most
  ``cancel_grace`` seconds) until that task has finished, so no asyncio work outlives the Trio call
  that asked for it. Whether a cancelled operation took effect is unknown (a publish may have
  reached the server): callers make operations idempotent (a ``Nats-Msg-Id``) or re-read.
* **Closing** (:meth:`AsyncioBridge.aclose`, or leaving :func:`open_bridge`) runs the registered
  asyncio shutdown hooks (closing NATS connections), cancels every task still running in the loop,
  stops the loop and joins the thread. Calls made after closing, and calls still waiting when the
  loop goes away, raise :class:`BridgeClosed`.
* :class:`Inbox` carries a stream of items (subscription messages) from the loop to Trio through
  a bounded buffer; when Trio does not keep up, the newest items are dropped and counted (the
  policy for at-most-once core NATS subscriptions; JetStream reads are pulled on demand instead).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, Generic, TypeVar

import structlog
import trio

T = TypeVar("T")

log = structlog.get_logger("meterd.cluster.bridge")


class BridgeClosed(RuntimeError):
    """The bridge's asyncio loop is closed (or closing): nothing more can be run on it."""


class _Call(Generic[T]):
    """One Trio → asyncio call: its task (set in the loop thread) and its outcome."""

    __slots__ = ("done", "error", "task", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.task: asyncio.Task[T] | None = None
        self.value: T | None = None
        self.error: BaseException | None = None


class AsyncioBridge:
    """One asyncio event loop in its own thread; Trio tasks run coroutines on it.

    Create it with :func:`open_bridge` (which starts and closes it) rather than directly.
    """

    def __init__(self, *, name: str = "meterd-asyncio", cancel_grace: float = 5.0) -> None:
        self.name = name
        self.cancel_grace = cancel_grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # touched in the loop thread only
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._lock = threading.Lock()
        self._submits: collections.deque[tuple[Callable[[], None], _Call[Any] | None]] = (
            collections.deque()
        )
        self._submit_scheduled = False
        self._finished: collections.deque[_Call[Any]] = collections.deque()
        self._finished_scheduled = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop thread and wait (without blocking Trio) until its loop runs."""
        if self._thread is not None:
            raise RuntimeError(f"bridge {self.name} was already started")
        token = trio.lowlevel.current_trio_token()
        self._token = token
        ready = trio.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.call_soon(token.run_sync_soon, ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        await ready.wait()

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closing and self._loop.is_running()

    def add_shutdown_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """An asyncio coroutine function run in the loop when the bridge closes (first added,
        last run): how connections living on the loop are closed before it stops."""
        self._shutdown_hooks.append(hook)

    async def aclose(self) -> None:
        """Run the shutdown hooks, cancel what still runs on the loop, stop it, join the thread.

        Idempotent. Shielded from cancellation: a bridge is always closed completely.
        """
        if self._closing or self._loop is None or self._thread is None:
            return
        loop, thread = self._loop, self._thread
        with trio.CancelScope(shield=True):
            hooks = list(reversed(self._shutdown_hooks))

            async def shutdown() -> None:
                for hook in hooks:
                    try:
                        await asyncio.wait_for(hook(), timeout=self.cancel_grace)
                    except Exception as error:  # a failing hook must not stop the others
                        log.warning(
                            "cluster.bridge.shutdown_hook_failed",
                            bridge=self.name,
                            error=f"{type(error).__name__}: {error}",
                        )
                self._closing = True
                me = asyncio.current_task()
                pending = [task for task in self._tasks if task is not me and not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=self.cancel_grace)
                others = [
                    task for task in asyncio.all_tasks() if task is not me and not task.done()
                ]
                for task in others:
                    task.cancel()
                if others:
                    await asyncio.wait(others, timeout=self.cancel_grace)
                await loop.shutdown_asyncgens()

            try:
                await self.call(shutdown)
            finally:
                self._closing = True
                loop.call_soon_threadsafe(loop.stop)
                await trio.to_thread.run_sync(thread.join)
                with self._lock:  # calls that reached the queue after the loop's last turn
                    leftovers = [state for _, state in self._submits if state is not None]
                    self._submits.clear()
                for state in leftovers:
                    state.error = BridgeClosed(f"bridge {self.name}: closed")
                    state.done.set()
                self._wake_finished()
                log.debug("cluster.bridge.closed", bridge=self.name)

    # -- calls -----------------------------------------------------------------------------

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` as an asyncio task on the loop and return its result to this Trio task.

        The coroutine's exception is raised here unchanged. If this Trio task is cancelled, the
        asyncio task is cancelled and waited for (at most ``cancel_grace`` seconds) before the
        cancellation goes on.
        """
        loop = self._loop
        if loop is None or self._closing or loop.is_closed():
            raise BridgeClosed(f"bridge {self.name}: its asyncio loop is not running")
        state: _Call[T] = _Call()

        def finished(task: asyncio.Task[T]) -> None:  # loop thread
            self._tasks.discard(task)
            if task.cancelled():
                state.error = BridgeClosed(
                    f"bridge {self.name}: the asyncio task was cancelled on the loop's side"
                )
            elif (error := task.exception()) is not None:
                state.error = error
            else:
                state.value = task.result()
            self._to_trio(state)

        def submit() -> None:  # loop thread
            if self._closing:
                state.error = BridgeClosed(f"bridge {self.name}: closing")
                self._to_trio(state)
                return
            task = loop.create_task(fn())
            state.task = task
            self._tasks.add(task)
            task.add_done_callback(finished)

        def cancel() -> None:  # loop thread
            if state.task is not None:
                state.task.cancel()

        self._to_loop(submit, state)
        try:
            await state.done.wait()
        except trio.Cancelled as trio_cancelled:
            # Cancel the asyncio side and wait until it has really finished: nothing this
            # call started keeps running after it returns.
            try:
                self._to_loop(cancel, None)
            except BridgeClosed:  # the loop is gone: nothing of this call runs any more
                raise trio_cancelled from None
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.cancel_grace
                await state.done.wait()
            if scope.cancelled_caught:
                log.warning(
                    "cluster.bridge.cancel_slow",
                    bridge=self.name,
                    grace_s=self.cancel_grace,
                    hint="an asyncio task ignored cancellation; it may still be running",
                )
            raise
        if state.error is not None:
            raise state.error
        return state.value  # type: ignore[return-value]

    # Crossings are batched: a burst of calls wakes the loop thread once, and a burst of
    # finished tasks wakes Trio once (each wake-up of the other thread is the dear part).

    def _to_loop(self, fn: Callable[[], None], state: _Call[Any] | None) -> None:
        """Run ``fn`` in the loop thread soon (from the Trio thread)."""
        loop = self._loop
        if loop is None:
            raise BridgeClosed(f"bridge {self.name} was not started")
        with self._lock:
            self._submits.append((fn, state))
            if self._submit_scheduled:
                return
            self._submit_scheduled = True
        try:
            loop.call_soon_threadsafe(self._run_submits)
        except RuntimeError as error:  # the loop is closed
            with self._lock:
                self._submit_scheduled = False
                with suppress(ValueError):
                    self._submits.remove((fn, state))
            raise BridgeClosed(f"bridge {self.name}: its asyncio loop is closed") from error

    def _run_submits(self) -> None:  # loop thread
        with self._lock:
            batch = list(self._submits)
            self._submits.clear()
            self._submit_scheduled = False
        for fn, _ in batch:
            fn()

    def _to_trio(self, state: _Call[Any]) -> None:
        """Wake ``state``'s Trio caller soon (from the loop thread)."""
        with self._lock:
            self._finished.append(state)
            if self._finished_scheduled:
                return
            self._finished_scheduled = True
        if self._token is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._wake_finished)

    def _wake_finished(self) -> None:  # Trio thread
        with self._lock:
            batch = list(self._finished)
            self._finished.clear()
            self._finished_scheduled = False
        for state in batch:
            state.done.set()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run the plain function ``fn()`` in the loop thread soon (fire and forget)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise BridgeClosed(f"bridge {self.name}: its asyncio loop is not running")
        loop.call_soon_threadsafe(fn)

    @property
    def in_flight(self) -> int:
        """Asyncio tasks started by calls and not finished yet (approximate from Trio)."""
        return len(self._tasks)


class InboxClosed(Exception):
    """The inbox was closed (its subscription ended); no more items will come."""


class Inbox(Generic[T]):
    """A bounded buffer from the loop thread (``put``) to one Trio consumer (``get``).

    Policy when full: the newest item is dropped and counted in :attr:`dropped` (``put`` returns
    False). The loop thread never blocks on Trio, and memory stays bounded by ``capacity``.
    """

    def __init__(self, capacity: int, token: trio.lowlevel.TrioToken, *, name: str = "") -> None:
        if capacity < 1:
            raise ValueError(f"inbox {name!r}: capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.name = name
        self.dropped = 0
        self._token = token
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._wake_scheduled = False
        self._closed = False
        self._event = trio.Event()  # touched in the Trio thread only

    def put(self, item: T) -> bool:
        """Called from the loop thread. False when the item was dropped (inbox full or closed)."""
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(item)
            schedule = not self._wake_scheduled
            self._wake_scheduled = True
        if schedule:
            self._schedule_wake()
        return True

    def close(self) -> None:
        """Called from either thread: ``get`` raises :class:`InboxClosed` once it is drained."""
        with self._lock:
            self._closed = True
            schedule = not self._wake_scheduled
            self._wake_scheduled = True
        if schedule:
            self._schedule_wake()

    def _schedule_wake(self) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:  # Trio thread
        with self._lock:
            self._wake_scheduled = False
        self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    async def get(self) -> T:
        """The next item, in the order put; waits for one."""
        while True:
            self._event = trio.Event()
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    break
                if self._closed:
                    raise InboxClosed(f"inbox {self.name!r} is closed")
            await self._event.wait()
        await trio.lowlevel.checkpoint()
        return item


@asynccontextmanager
async def open_bridge(
    *, name: str = "meterd-asyncio", cancel_grace: float = 5.0
) -> AsyncIterator[AsyncioBridge]:
    """A started :class:`AsyncioBridge`, closed (loop stopped, thread joined) on exit."""
    bridge = AsyncioBridge(name=name, cancel_grace=cancel_grace)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.aclose()
