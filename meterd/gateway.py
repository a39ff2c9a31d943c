"""The gateway daemon: ingest and the API in this process, the accounts in owner processes.

``meterd run`` starts it when ``[partitions] owners >= 1`` (:func:`meterd.app.serve`);
docs/partitions.md "The gateway" and docs/architecture.md describe it. The tree::

    root (one_for_one)
    ├── owner-0 ... owner-N-1   each an OS process (python -m meterd.partitions.owner),
    │                           ready once it serves at its socket; its pid in the tree
    ├── link-0 ... link-N-1     the gateway's link to each owner (meterd.partitions._links)
    ├── ingest                  the producer websocket endpoint, handing batches to the
    │                           GatewaySubmitter (split by shard, verdicts joined)
    └── api                     the operator HTTP API

``one_for_one``: an owner that dies is restarted alone (its link reconnects by itself,
failing the slices it had in flight: their batches are answered ``unavailable`` and
re-sent by the producers); an owner that dies more than :data:`MAX_RESTARTS` times in
:data:`MAX_SECONDS` makes the root give up, and the daemon exits (its service manager
restarts it), as for any child. Children stop in reverse order: the API, then ingest
(which still acknowledges what it read: the links and owners run), the links, and the
owners last (SIGTERM, then SIGKILL after their grace).

The owners' sockets are in ``<shards directory>/run/`` (mode 0700), beside the shard
files: ``owner-K.sock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import structlog

import supervisors as sv
from meterd import __version__, memory
from meterd.api.gateway import build_gateway_app, ingest_counters
from meterd.api.metrics import Metrics, gateway_slice_histogram
from meterd.api.server import AnsweredErrors, AppServer
from meterd.config import Config
from meterd.ingest.server import IngestServer, wall_clock_ms
from meterd.partitions import (
    Owners,
    UnixTransport,
    shards_directory,
)
from meterd.partitions._gateway import GatewaySubmitter, OwnerLinks
from meterd.partitions._links import OwnerLink
from meterd.partitions._migrate import create_shards
from meterd.startup import StartupFailed, prepare_paths, run_until_signalled

__all__ = [
    "MAX_RESTARTS",
    "MAX_SECONDS",
    "GatewayServices",
    "OwnerCommand",
    "build_gateway",
    "owner_socket",
    "runtime_directory",
    "serve_gateway",
]

log = structlog.get_logger("meterd.gateway")

MAX_RESTARTS: Final = 5  # restarts of the root's children (an owner, a link) ...
MAX_SECONDS: Final = 10.0  # ... within this many seconds, or the daemon gives up
OWNER_START_TIMEOUT: Final = 60.0  # seconds for an owner to open its shards and serve
OWNER_SHUTDOWN: Final = 30.0  # seconds for an owner to finish its commits when stopped
_MAX_SOCKET_PATH: Final = 107  # bytes of a Unix socket path (sun_path, with its NUL)

OwnerCommand = Callable[[Config, int, str], Sequence[str]]
"""``(config, owner, socket path) -> argv`` of an owner process."""


def default_owner_command(config: Config, owner: int, socket_path: str) -> list[str]:
    """``python -m meterd.partitions.owner --config PATH --owner K --socket PATH``."""
    return [
        sys.executable,
        "-m",
        "meterd.partitions.owner",
        "--config",
        str(config.path),
        "--owner",
        str(owner),
        "--socket",
        socket_path,
    ]


def runtime_directory(config: Config) -> Path:
    """Where the owners' sockets are: ``run/`` in the shards directory; or, when a socket
    path there would be longer than a Unix socket's may be (a store deep in the file
    system: a clone in a long path), ``meterd-<uid>-<digest of the shards directory>`` in
    the system's temporary directory (mode 0700 as well, checked to be this user's)."""
    directory = shards_directory(config) / "run"
    longest = directory / f"owner-{max(config.partitions.owners - 1, 0)}.sock"
    if len(os.fsencode(str(longest))) <= _MAX_SOCKET_PATH:
        return directory
    digest = hashlib.blake2b(
        os.fsencode(str(shards_directory(config).resolve())), digest_size=8
    ).hexdigest()
    return Path(tempfile.gettempdir()) / f"meterd-{os.getuid()}-{digest}"


def owner_socket(config: Config, owner: int) -> str:
    path = str(runtime_directory(config) / f"owner-{owner}.sock")
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"store.path {config.store_path}: the owners' socket {path} is longer than a"
            f" Unix socket path may be ({_MAX_SOCKET_PATH} bytes); put the store in a"
            " directory with a shorter path"
        )
    return path


def prepare_runtime_directory(config: Config) -> Path:
    """Create the sockets' directory (mode 0700: only meterd's user reaches the owners);
    one that is not a directory of this user (a symlink, another user's) is refused."""
    directory = runtime_directory(config)
    with contextlib.suppress(FileExistsError):  # whatever is there is checked below
        directory.mkdir(mode=0o700, parents=True)
    found = os.lstat(directory)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        what = "a directory of another user" if stat.S_ISDIR(found.st_mode) else "not a directory"
        raise ValueError(
            f"store.path {config.store_path}: the owners' socket directory {directory} is"
            f" {what} (uid {found.st_uid}, meterd runs as uid {os.getuid()}): remove it"
        )
    os.chmod(directory, 0o700)
    return directory


@dataclass(frozen=True, slots=True)
class GatewayServices:
    """The running parts of the gateway daemon, as :func:`meterd.app.serve` and tests
    reach them."""

    root: sv.Supervisor
    owners: OwnerLinks
    submitter: GatewaySubmitter
    ingest: IngestServer
    api: GatewayApi


def build_gateway(
    config: Config,
    *,
    owner_command: OwnerCommand | None = None,
    max_seconds: float = MAX_SECONDS,
) -> GatewayServices:
    """Build (not start) the gateway's tree for ``config`` (``[partitions] owners >= 1``);
    ``owner_command`` and ``max_seconds`` (the root's intensity window) are for tests."""
    partitions = config.partitions
    if partitions.owners < 1:
        raise ValueError("build_gateway needs [partitions] owners >= 1")
    command = owner_command or default_owner_command
    transport = UnixTransport()
    holder: list[sv.Supervisor] = []

    def kill(owner: int) -> Callable[[int | None], None]:
        def kill_pid(pid: int | None) -> None:
            """SIGKILL owner ``owner`` if it is still the process ``pid`` (any pid: None),
            through its pidfd."""
            if not holder:
                return
            try:
                info = holder[0].child_info(f"owner-{owner}")
            except sv.NoSuchChild:
                return
            ref = info.ref
            if isinstance(ref, sv.ProcessRef) and pid in (None, ref.pid):
                ref.send_signal(signal.SIGKILL)

        return kill_pid

    specs: list[sv.ChildSpec] = []
    links: list[OwnerLink] = []
    for owner in range(partitions.owners):
        socket_path = owner_socket(config, owner)
        specs.append(
            sv.process_spec(
                f"owner-{owner}",
                list(command(config, owner, socket_path)),
                start_timeout=OWNER_START_TIMEOUT,
                shutdown=OWNER_SHUTDOWN,
            )
        )
        links.append(
            OwnerLink(
                owner,
                socket_path,
                transport,
                partitions,
                slice_timeout=partitions.slice_timeout.seconds,
                ping_interval=partitions.ping_interval.seconds,
                ping_timeout=partitions.ping_timeout.seconds,
                kill=kill(owner),
            )
        )
    owners = OwnerLinks(partitions, links)
    submitter = GatewaySubmitter(
        f"gw-{os.getpid()}-{time.time_ns() // 1_000_000}",
        owners,
        max_in_flight_events=config.ingest.max_in_flight_events,
        clock=wall_clock_ms,
    )
    ingest = IngestServer(config, submitter)
    api = GatewayApi(config, owners, ingest)
    specs += [link.child_spec() for link in links]
    specs += [ingest.child_spec(), api.child_spec()]
    root = sv.Supervisor(
        specs,
        max_restarts=MAX_RESTARTS,
        max_seconds=max_seconds,
        name="root",
        # The owners need nothing of one another: started at once, each an interpreter's
        # start-up and its shards' opening (docs/partitions.md, "The gateway").
        start_together=[[f"owner-{owner}" for owner in range(partitions.owners)]],
    )
    holder.append(root)
    api.root = root
    api.metrics.watch(root, None, None, ingest)
    round_trips = gateway_slice_histogram(api.metrics.registry)
    for link in links:
        link.on_round_trip = round_trips.labels(link.name).observe
    return GatewayServices(root, owners, submitter, ingest, api)


# ---- the API -----------------------------------------------------------------------------


class GatewayApi(AppServer):
    """The gateway's HTTP API: every route of the operator API, answered across the owners
    (:func:`meterd.api.gateway.build_gateway_app`)."""

    def __init__(self, config: Config, owners: Owners, ingest: IngestServer) -> None:
        self.owners = owners
        self.root: sv.Supervisor | None = None
        self.metrics = Metrics()  # the gateway's own series; /metrics adds every shard's
        super().__init__(
            config.api,
            AnsweredErrors(
                build_gateway_app(
                    config,
                    owners,
                    root=self._root,
                    registry=self.metrics.registry,
                    ingest=partial(ingest_counters, ingest),
                )
            ),
        )

    def _root(self) -> sv.Supervisor:
        if self.root is None:
            raise RuntimeError("the API is not attached to a tree")
        return self.root


# ---- running it ----------------------------------------------------------------------------


async def serve_gateway(
    config: Config,
    *,
    owner_command: OwnerCommand | None = None,
    max_seconds: float = MAX_SECONDS,
) -> None:
    """Run the gateway daemon until SIGINT or SIGTERM, then stop the tree in order.

    Raises :class:`meterd.startup.StartupFailed` or :class:`meterd.startup.DaemonFailed`
    (one sentence each) as :func:`meterd.app.serve` does."""
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    prepare_paths(config)
    try:
        prepare_runtime_directory(config)
        create_shards(config)  # each shard's store, its layout recorded, before its owner
        services = build_gateway(config, owner_command=owner_command, max_seconds=max_seconds)
    except (OSError, ValueError, sqlite3.Error) as error:
        raise StartupFailed(str(error)) from None

    def started() -> None:
        log.info(
            "meterd_started",
            version=__version__,
            config=str(config.path),
            owners=services.owners.pids(),
        )
        log.info("listening", ingest=services.ingest.url, api=services.api.url)

    # The collector's thresholds as in one process (meterd.memory): untuned, a young
    # collection ran every 700 allocations, walking the batches in flight each time, and
    # its full collections walked everything start-up allocated (120-190 ms each,
    # docs/partitions.md "Ack latency"). No collections on a timer
    # (meterd.memory.collect_on_schedule): what they bound, the survivors of the actors'
    # cells, is in the owners; here they cost more than the automatic ones (measured:
    # gateway 8.7-9.3 against 7.3-7.9 us/event). Its pauses are exported as theirs are.
    memory.tune()
    pauses = memory.GcPauses(services.api.metrics.observe_gc_pause)
    pauses.install()
    try:
        await run_until_signalled(services.root, config, on_started=started)
    finally:
        pauses.remove()
    log.info("meterd_stopped")
