"""The tables of ``config.toml``, each key declared once (its type, default, unit, meaning).

A field annotated with :func:`meterd.schema.key` is a key of the file; the sentence given to
``key`` is what docs/config.md shows and what explains the key. Adding a key is one line
here (then ``python -m meterd.config.reference --write`` regenerates the docs table), and
the code reads it as ``config.<table>.<key>``: for example a per-producer connection cap
in ``[ingest]``::

    max_connections_per_producer: Annotated[int, key("...", ge=1, le=10_000)] = 64
"""

import hashlib
import hmac
import os
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Annotated, Final

from meterd.alerts._config import AlertRule, Webhook
from meterd.billing import BillingConfig, PriceRule
from meterd.model import DAY_MS, Meter
from meterd.schema import Duration, Invalid, got, key

from ._net import Listen, Tls

DEFAULT_WINDOW_MS: Final = 35 * DAY_MS
DEFAULT_BILLING_FILE: Final = "billing.sqlite3"  # beside the store unless [billing] path is set
PRODUCER_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
TOKEN: Final = r"[\x21-\x7e]+"  # what fits in "Authorization: Bearer <token>"
_TOKEN_TEXT: Final = (
    "printable ASCII without spaces (the token travels in an 'Authorization: Bearer' header)"
)
_TLS_CERT: Final = "PEM certificate (chain): then this endpoint serves TLS only; with tls_key."
_TLS_KEY: Final = "Unencrypted PEM private key of tls_cert."


def token_digest(token: str) -> bytes:
    """A fixed-length digest of ``token``, so that comparing two does not leak their lengths."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


ACCOUNT_TOKEN_PREFIX: Final = "mta1."


def account_token(secret: str, account: str) -> str:
    """``account``'s token under ``secret``: ``mta1.`` and the hex HMAC-SHA256 of the
    account id (docs/api.md, "Live usage"). Anyone holding it reads that account's live
    usage; changing the secret revokes every token."""
    mac = hmac.new(
        secret.encode(),
        b"meterd account token\x00" + account.encode("utf-8", "surrogatepass"),
        hashlib.sha256,
    )
    return ACCOUNT_TOKEN_PREFIX + mac.hexdigest()


class _TlsKeys:
    """``tls`` of a table with ``tls_cert`` and ``tls_key`` keys."""

    __slots__ = ()
    tls_cert: Path | None
    tls_key: Path | None

    @property
    def tls(self) -> Tls | None:
        """The certificate and key when both are set (checked at load), else None."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return Tls(self.tls_cert, self.tls_key)


@dataclass(frozen=True, slots=True)
class IngestConfig(_TlsKeys):
    """``[ingest]``: the producers' websocket endpoint (docs/ingest.md)."""

    listen: Annotated[Listen, key("Where producers connect (websocket path /v1/ingest).")] = Listen(
        "127.0.0.1", 8700
    )
    tls_cert: Annotated[Path | None, key(_TLS_CERT)] = None
    tls_key: Annotated[Path | None, key(_TLS_KEY)] = None
    max_frame_bytes: Annotated[
        int,
        key(
            "Largest websocket message a producer may send (told in hello).",
            unit="bytes",
            ge=1024,
            le=64 * 1024 * 1024,
        ),
    ] = 1_048_576
    max_batch: Annotated[int, key("Most events in one batch.", unit="events", ge=1, le=100_000)] = (
        1000
    )
    window: Annotated[
        int,
        key("Batches a connection may have unacknowledged.", unit="batches", ge=1, le=65_536),
    ] = 64
    max_in_flight_events: Annotated[
        int,
        key(
            "Daemon-wide budget of events read and not yet applied by their actor; while it"
            " is spent no connection is read (backpressure). An owner process splits it"
            " evenly over its shards.",
            unit="events",
            ge=1,
            le=100_000_000,
        ),
    ] = 20_000
    max_ack_bytes: Annotated[
        int,
        key(
            "Daemon-wide bytes of acks held for producers (batches read counted at their"
            " worst case, then prepared acks until sent); while reached no connection is read.",
            unit="bytes",
            ge=65_536,
            le=1 << 40,
        ),
    ] = 64 * 1024 * 1024
    max_ack_bytes_per_connection: Annotated[
        int,
        key(
            "The same per connection: a producer that does not read its acks stops being read.",
            unit="bytes",
            ge=65_536,
            le=1 << 40,
        ),
    ] = 8 * 1024 * 1024
    max_connections_per_producer: Annotated[
        int,
        key(
            "Websockets one producer may have open at once; the next is refused"
            " (error too_many_connections, close 1008).",
            ge=1,
            le=100_000,
        ),
    ] = 32
    keepalive_interval: Annotated[
        Duration,
        key("A producer silent this long while the server waits for its next frame is pinged."),
    ] = Duration(30_000)
    keepalive_timeout: Annotated[
        Duration,
        key(
            "A pinged producer is dropped if neither the pong nor any part of a frame comes"
            " within this (nor does it read an ack within interval + timeout)."
        ),
    ] = Duration(30_000)


@dataclass(frozen=True, slots=True)
class ApiConfig(_TlsKeys):
    """``[api]``: the operators' HTTP API (docs/api.md)."""

    listen: Annotated[Listen, key("Where the HTTP API listens.")] = Listen("127.0.0.1", 8701)
    _: KW_ONLY
    admin_token: Annotated[
        str,
        key(
            "Bearer token of every /v1 endpoint.",
            secret=True,
            pattern=TOKEN,
            invalid=_TOKEN_TEXT,
        ),
    ] = field(repr=False)
    tls_cert: Annotated[Path | None, key(_TLS_CERT)] = None
    tls_key: Annotated[Path | None, key(_TLS_KEY)] = None
    account_token_secret: Annotated[
        str | None,
        key(
            "Signs account tokens (`meterd token ACCOUNT`): a token opens one account's live"
            " usage (docs/api.md); absent: only the admin token does.",
            secret=True,
            pattern=r"[\x21-\x7e]{16,}",
            invalid="at least 16 printable ASCII characters without spaces",
        ),
    ] = field(default=None, repr=False)

    def is_admin_token(self, token: str) -> bool:
        """Whether ``token`` is the admin token (constant-time comparison)."""
        return hmac.compare_digest(token_digest(token), token_digest(self.admin_token))

    def account_token(self, account: str) -> str | None:
        """The token of ``account`` (None without ``account_token_secret``)."""
        if self.account_token_secret is None:
            return None
        return account_token(self.account_token_secret, account)

    def is_account_token(self, token: str, account: str) -> bool:
        """Whether ``token`` is ``account``'s token (constant-time comparison)."""
        expected = self.account_token(account)
        return expected is not None and hmac.compare_digest(
            token_digest(token), token_digest(expected)
        )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: the SQLite store and its writer (docs/accounts.md)."""

    path: Annotated[Path, key("The SQLite database file.")] = Path("var/meterd.sqlite3")
    checkpoint_interval: Annotated[
        Duration,
        key("How often an actor writes its windows; the journal covers recovery meanwhile."),
    ] = Duration(30_000)
    commit_interval: Annotated[
        Duration,
        key(
            "Least time between two group commits under load (0: commit as soon as the last"
            " one is done).",
            ge=Duration(0),
            le=Duration(1000),
            was="commit_interval_ms",
            was_unit="ms",
        ),
    ] = Duration(2)
    index_cycle: Annotated[
        Duration,
        key(
            "How often the writer writes an account's journal-index and dedupe rows; memory"
            " holds about ingest rate x cycle rows meanwhile.",
            ge=Duration(1),
            le=Duration(3_600_000),
        ),
    ] = Duration(5000)
    wal_checkpoint_interval: Annotated[
        Duration,
        key(
            "At most one checkpoint of SQLite's write-ahead log per this, off the commit path"
            " (0: SQLite's own, inside the commit that passes 1,000 pages). An owner process's"
            " shard files each at most once per this times their number.",
            ge=Duration(0),
            le=Duration(60_000),
            was="wal_checkpoint_interval_ms",
            was_unit="ms",
        ),
    ] = Duration(100)


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    """``[accounts]``: the per-account meter actors and their supervisor."""

    idle_timeout: Annotated[
        Duration, key("An actor without traffic this long checkpoints and stops.")
    ] = Duration(300_000)
    mailbox_size: Annotated[
        int, key("Messages an actor's mailbox holds.", unit="messages", ge=1, le=1_000_000)
    ] = 1024
    max_restarts: Annotated[
        int,
        key(
            "Restarts of meter actors the supervisor allows within max_seconds before it"
            " gives up (a poison event costs one).",
            ge=0,
            le=1_000_000,
        ),
    ] = 50
    max_seconds: Annotated[Duration, key("The period max_restarts counts over.")] = Duration(10_000)
    max_awake: Annotated[
        int,
        key(
            "Meter actors awake at once before idle ones are put to sleep early (idle for"
            " 1 s, not idle_timeout) and wake-ups wait: bounds the memory of a burst of"
            " new accounts. An owner process splits it evenly over its shards.",
            unit="actors",
            ge=1,
            le=100_000_000,
        ),
    ] = 100_000


MAX_OWNERS: Final = 256
AUTO_MIN_OWNERS: Final = 2  # owners = "auto" on a host of 1 or 2 cores (docs/partitions.md)


class AutoOwners(int):
    """``owners = "auto"`` resolved on this host (an int: every reader sees a number)."""

    __slots__ = ()


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_owners(cores: int | None = None) -> AutoOwners:
    """``owners = "auto"``: one core for the gateway, the rest for owners, at least
    :data:`AUTO_MIN_OWNERS` (capped at the shards by the ``[partitions]`` rules)."""
    return AutoOwners(max(AUTO_MIN_OWNERS, (host_cores() if cores is None else cores) - 1))


def owners_value(value: object) -> int:
    """``[partitions] owners``: a number of processes (0 to 256) or ``"auto"``."""
    if value == "auto":
        return auto_owners()
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f'expected a number of processes or "auto", {got(value)}')
    if not 0 <= value <= MAX_OWNERS:
        raise Invalid(f"must be between 0 and {MAX_OWNERS} (processes), got {value}")
    return value


@dataclass(frozen=True, slots=True)
class PartitionsConfig:
    """``[partitions]``: accounts in partitions, held by owner processes (docs/partitions.md)."""

    count: Annotated[
        int,
        key(
            "Partitions accounts are hashed into; changing it on a store with data is an"
            " offline migration (docs/partitions.md).",
            unit="partitions",
            ge=1,
            le=65_536,
        ),
    ] = 256
    shard_size: Annotated[
        int,
        key(
            "Partitions per SQLite file (a shard): owners take whole shards; must divide count.",
            unit="partitions",
            ge=1,
            le=65_536,
        ),
    ] = 16
    owners: Annotated[
        int,
        key(
            'Owner processes holding the shards (0 to 256); "auto" (the shipped config):'
            " the host's cores minus one, at least 2, at most the shards; 0 (the default"
            " when the key is absent): the accounts run inside the daemon's own process, in"
            " one store file.",
            unit="processes",
            parse=owners_value,
            kind='number or `"auto"`',
        ),
    ] = 0
    slice_timeout: Annotated[
        Duration,
        key(
            "A slice of a producer batch its owner has not answered within this is given up:"
            " the batch is answered unavailable (never acked) and the producer re-sends it.",
            ge=Duration(1),
            le=Duration(3_600_000),
        ),
    ] = Duration(5000)
    ping_interval: Annotated[
        Duration,
        key(
            "How often the gateway pings each owner process to check that it answers; one"
            " silent for twice this has its batches answered unavailable until it answers.",
            ge=Duration(1),
            le=Duration(3_600_000),
        ),
    ] = Duration(1000)
    ping_timeout: Annotated[
        Duration,
        key(
            "An owner that does not answer a ping within this is hung: the gateway kills it"
            " (SIGKILL) and its supervisor restarts it.",
            ge=Duration(1),
            le=Duration(3_600_000),
        ),
    ] = Duration(5000)

    @property
    def shards(self) -> int:
        """How many shards (SQLite files) the partitions are grouped into."""
        return self.count // self.shard_size


NODE_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: this node of a meterd cluster on NATS JetStream (docs/cluster.md).
    Absent: a single node, nothing of it runs."""

    node: Annotated[
        str,
        key(
            "This node's name, unique in the cluster (in NATS subjects, leases and /v1/cluster).",
            pattern=NODE_NAME,
            invalid="a valid node name (1-64 characters of A-Z, a-z, 0-9, '_', '-', starting"
            " with a letter or digit; no dots: it is a NATS subject token)",
        ),
    ]
    nats: Annotated[
        tuple[str, ...],
        key(
            "URLs of the NATS servers (JetStream enabled); the client learns the others"
            " the cluster announces.",
            kind="array of NATS URLs",
            unit="URLs",
            max_length=64,
        ),
    ]
    duplicate_window: Annotated[
        Duration,
        key(
            "How long the log stream drops a re-publish of the same slice (a gateway's own"
            " retries); producers' ids are deduplicated by the owners, for dedupe_window.",
            ge=Duration(1000),
            le=Duration(86_400_000),
        ),
    ] = Duration(120_000)
    retention: Annotated[
        Duration,
        key(
            "How long the log stream keeps a slice (its max_age); an owner replaying from"
            " its store's position needs the slices since then.",
            ge=Duration(60_000),
        ),
    ] = Duration(7 * DAY_MS)
    lease_ttl: Annotated[
        Duration,
        key(
            "A shard lease not renewed within this expires; every node must use the same.",
            ge=Duration(1000),
            le=Duration(600_000),
        ),
    ] = Duration(10_000)
    snapshot_interval: Annotated[
        Duration,
        key(
            "How often the owner of a shard snapshots its store to the object store (a new"
            " owner restores the latest and replays the log after it); retention must be at"
            " least twice this.",
            ge=Duration(1000),
            le=Duration(DAY_MS),
        ),
    ] = Duration(300_000)
    rebalance: Annotated[
        bool,
        key(
            "Hand a shard over to a live node ranked first for it (a node that joined);"
            " false: a node only takes shards nobody holds.",
        ),
    ] = True


@dataclass(frozen=True, slots=True)
class Producer:
    """One ``[[producers]]`` entry. ``meters`` is None when it may write every meter."""

    name: Annotated[
        str,
        key(
            "The producer's name, in logs and in the events it sends.",
            pattern=PRODUCER_NAME,
            invalid="a valid producer name (1-64 characters of A-Z, a-z, 0-9, '.', '_', '-',"
            " starting with a letter or digit)",
        ),
    ]
    token: Annotated[
        str,
        key(
            "Bearer token the producer presents at the websocket handshake; its own.",
            secret=True,
            pattern=TOKEN,
            invalid=_TOKEN_TEXT,
        ),
    ] = field(repr=False)
    meters: Annotated[
        frozenset[str] | None,
        key("The meters it may write (absent: every meter).", kind="array of meter names"),
    ] = None

    def may_write(self, meter: str) -> bool:
        return self.meters is None or meter in self.meters


@dataclass(frozen=True, slots=True)
class Config:
    """The whole file. Top-level keys are declared here; tables are their own classes."""

    path: Path
    ingest: IngestConfig
    api: ApiConfig
    store: StoreConfig
    accounts: AccountsConfig = AccountsConfig()
    partitions: PartitionsConfig = PartitionsConfig()
    cluster: ClusterConfig | None = None
    late_window: Annotated[Duration, key("Oldest event time accepted, relative to now.")] = (
        Duration(DEFAULT_WINDOW_MS)
    )
    dedupe_window: Annotated[
        Duration,
        key(
            "How long an (account, id) pair is remembered; at least late_window, or a late"
            " re-send could be counted twice."
        ),
    ] = Duration(DEFAULT_WINDOW_MS)
    producers: tuple[Producer, ...] = ()
    meters: tuple[Meter, ...] = ()
    billing: BillingConfig = BillingConfig()
    prices: tuple[PriceRule, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    alerts: tuple[AlertRule, ...] = ()
    warnings: tuple[str, ...] = ()
    meters_by_name: dict[str, Meter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meters_by_name", {meter.name: meter for meter in self.meters})

    @property
    def ingest_listen(self) -> Listen:
        return self.ingest.listen

    @property
    def api_listen(self) -> Listen:
        return self.api.listen

    @property
    def store_path(self) -> Path:
        """The SQLite file, absolute (relative paths were taken from the config's directory)."""
        return self.store.path

    @property
    def billing_path(self) -> Path:
        """The billing database (adjustments, closed periods): its own SQLite file."""
        return self.billing.path or self.store.path.with_name(DEFAULT_BILLING_FILE)

    def producer_for_token(self, token: str) -> Producer | None:
        """The producer holding ``token``, or None.

        Compares against every producer in constant time, without stopping at a
        match, so the answer's timing says nothing about which token matched.
        """
        presented = token_digest(token)
        found: Producer | None = None
        for producer in self.producers:
            if hmac.compare_digest(presented, token_digest(producer.token)):
                found = producer
        return found
