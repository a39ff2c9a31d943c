"""Why the daemon could not start, in one sentence naming the config key and its value.

A failure while the tree starts reaches :func:`meterd.app.serve` wrapped several times over:
Trio nurseries put each exception in an exception group, a supervisor whose child failed to
start raises :class:`supervisors.StartError` (its ``reason`` the child's error, perhaps a group
again), and meterd's own errors chain the OS's or SQLite's (``__cause__``). :func:`describe`
unwraps all that down to the root cause and says it as one sentence with the key of the
root's child that failed (``ingest.listen``, ``api.listen``, ``store.path``) or of the file
(``billing.path``), and what to do when that is clear. ``meterd run`` prints it and exits 1.
"""

from __future__ import annotations

import errno
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import structlog
import trio

import supervisors as sv
from meterd.config import Config

__all__ = [
    "DaemonFailed",
    "StartupFailed",
    "describe",
    "describe_stop",
    "hold_store",
    "prepare_paths",
]

#: The config key behind each child of the root (meterd.app's tree).
CHILD_KEYS = {
    "store-writer": "store.path",
    "accounts": "store.path",
    "ingest": "ingest.listen",
    "api": "api.listen",
}


class StartupFailed(Exception):
    """The daemon could not start; ``str()`` is one sentence saying why (:func:`describe`)."""


class DaemonFailed(Exception):
    """The daemon started, then its supervision tree gave up (a child of the root failed
    more often than the root's restart intensity allows); ``str()`` is one sentence saying
    which child and why (:func:`describe_stop`)."""


def setting(config: Config, key: str) -> str:
    """The value of ``key`` in ``config``, as the sentence shows it."""
    values = {
        "store.path": config.store_path,
        "billing.path": config.billing_path,
        "ingest.listen": config.ingest.listen,
        "api.listen": config.api.listen,
    }
    return str(values[key])


def prepare_paths(config: Config) -> None:
    """Create the directories of the store and the billing database, or raise
    :class:`StartupFailed` naming the one that cannot be."""
    for key, path in (("store.path", config.store_path), ("billing.path", config.billing_path)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            why = error.strerror or str(error)
            where = "" if error.filename is None else f" ({error.filename})"
            raise StartupFailed(
                f"{key} {path}: cannot create its directory {path.parent}: {why}{where}"
            ) from None


@contextmanager
def hold_store(config: Config) -> Iterator[None]:
    """The daemon's claim on its store for its life: a shared lock on ``<store.path>.lock``
    (``meterd migrate partitions`` takes it exclusively, so neither runs during the other),
    then the check that the files on disk are in the layout ``[partitions]`` asks
    (docs/partitions.md, "Changing the layout"). Raises :class:`StartupFailed` (one sentence
    naming the files found and the command to run) otherwise; a fresh directory passes."""
    from meterd.partitions._migrate import MigrationError, check_layout, layout_lock

    with ExitStack() as held:
        try:
            held.enter_context(layout_lock(config, exclusive=False))
            check_layout(config)
        except MigrationError as error:
            raise StartupFailed(f"store.path {config.store_path}: {error}") from None
        except OSError as error:
            raise StartupFailed(describe(error, config, "store.path")) from None
        yield


def root_cause(error: BaseException) -> tuple[Hashable | None, BaseException]:
    """``(child of the root that failed or None, the error that made it fail)``: groups of
    one (or their first error that is not a cancellation), ``StartError`` and
    ``RestartIntensityExceeded`` unwrapped."""
    child: Hashable | None = None
    while True:
        if isinstance(error, BaseExceptionGroup):
            inner = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)]
            error = (inner or list(error.exceptions))[0]
        elif isinstance(error, sv.StartError):
            child = error.child_id if child is None else child
            error = error.reason
        elif isinstance(error, sv.RestartIntensityExceeded) and error.last_exit.error is not None:
            child = error.child_id if child is None else child
            error = error.last_exit.error
        else:
            return child, error


def _lowest(error: BaseException) -> BaseException:
    """The OS's or SQLite's error under ``error`` (its ``__cause__`` chain), else ``error``."""
    lowest = error
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, OSError | sqlite3.Error):
            lowest = cause
        cause = cause.__cause__
    return lowest


def describe(error: BaseException, config: Config, key: str | None = None) -> str:
    """One sentence for ``error`` (see the module doc); ``key`` if the caller knows it."""
    child, cause = root_cause(error)
    if key is None and child is not None:
        key = CHILD_KEYS.get(str(child))
    low = _lowest(cause)
    if key is None:
        where = "" if child is None else f"{child!r}: "
        return f"{where}{type(cause).__name__}: {cause}"
    value = setting(config, key)
    if key.endswith(".listen"):
        why = low.strerror if isinstance(low, OSError) and low.strerror else str(low)
        sentence = f"{key} {value}: cannot listen: {why}"
        if isinstance(low, OSError) and low.errno == errno.EADDRINUSE:
            sentence += f" (another process listens there: stop it or change {key})"
        return sentence
    if isinstance(low, OSError):
        sentence = f"{key} {value}: {low.strerror or low}"
        if low.filename is not None and str(low.filename) != value:
            sentence += f" ({low.filename})"
        return sentence
    if isinstance(low, sqlite3.Error):
        sentence = f"{key} {value}: {low}"
        if isinstance(low, sqlite3.DatabaseError) and not isinstance(low, sqlite3.OperationalError):
            sentence += (
                " (the file is damaged or not meterd's: restore it from a backup, or move it"
                " aside to start with an empty one)"
            )
        return sentence
    message = str(cause)
    if value in message:
        return f"{key}: {message}"
    return f"{key} {value}: {type(cause).__name__}: {message}"


def describe_stop(error: BaseException, config: Config) -> str:
    """One sentence for the tree giving up after the start: the child of the root that
    failed too often, its last error, and the config key behind that child."""
    gave_up = _find(error, sv.RestartIntensityExceeded)
    child, cause = root_cause(error)
    who = "" if child is None else f" after {child!r} failed too often"
    if gave_up is not None and gave_up.last_exit.error is None:  # killed, or a clean exit
        last = f"{gave_up.child_id!r} {gave_up.last_exit}"
    else:
        low = _lowest(cause)
        if isinstance(low, OSError) and low.strerror:
            last = low.strerror + ("" if low.filename is None else f" ({low.filename})")
        elif isinstance(low, sqlite3.Error):
            last = str(low)
        else:
            last = f"{type(cause).__name__}: {cause}"
    key = None if child is None else CHILD_KEYS.get(str(child))
    where = "" if key is None else f" ({key} {setting(config, key)})"
    return (
        f"the supervision tree gave up{who} (restart intensity exceeded);"
        f" its last error: {last}{where}"
    )


def _find(
    error: BaseException, kind: type[sv.RestartIntensityExceeded]
) -> sv.RestartIntensityExceeded | None:
    """The first ``kind`` in ``error`` (through groups and ``StartError``), else None."""
    while True:
        if isinstance(error, kind):
            return error
        if isinstance(error, BaseExceptionGroup):
            inner = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)]
            error = (inner or list(error.exceptions))[0]
        elif isinstance(error, sv.StartError):
            error = error.reason
        else:
            return None


async def run_until_signalled(
    root: sv.Supervisor,
    config: Config,
    *,
    on_started: Callable[[], None],
    beside: Sequence[Callable[[], Awaitable[object]]] = (),
) -> None:
    """Start ``root``, call ``on_started``, and run until SIGINT or SIGTERM; then stop the
    tree in order. ``beside`` are tasks that run as long as the tree does.

    Raises :class:`StartupFailed` when the tree cannot start and :class:`DaemonFailed` when
    it gives up after the start, each with one sentence (:func:`describe`,
    :func:`describe_stop`)."""
    failed_start: str | None = None
    failed_run: str | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as side:
                for task in beside:
                    side.start_soon(task)
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(root.run)
                    except Exception as error:  # raised here, before a nursery wraps it
                        failed_start = describe(error, config)
                    else:
                        on_started()
                        async for signum in signals:
                            _log.info("meterd_stopping", signal=signal.Signals(signum).name)
                            root.stop()
                            break
                side.cancel_scope.cancel()
    except Exception as error:  # the tree gave up after the start (Trio's groups around it)
        failed_run = describe_stop(error, config)
    if failed_start is not None:
        raise StartupFailed(failed_start)
    if failed_run is not None:
        raise DaemonFailed(failed_run)


_log = structlog.get_logger("meterd")
