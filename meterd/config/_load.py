"""Reading ``config.toml``: each table checked against its declaration, then the rules
that span keys and tables (duplicate names, references to meters, overlapping addresses)."""

from __future__ import annotations

import hmac
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from meterd.alerts._config import check_alerts
from meterd.billing import BillingConfig, check_prices
from meterd.model import Aggregation, Meter
from meterd.schema import ABSENT, Check, check_fields, show, suggest

from ._model import (
    AccountsConfig,
    ApiConfig,
    AutoOwners,
    ClusterConfig,
    Config,
    IngestConfig,
    PartitionsConfig,
    Producer,
    StoreConfig,
    token_digest,
)
from ._net import check_tls

T = TypeVar("T")
SECTIONS = (
    "ingest",
    "api",
    "store",
    "accounts",
    "partitions",
    "cluster",
    "producers",
    "meters",
    "billing",
    "prices",
    "webhooks",
    "alerts",
)


class ConfigError(Exception):
    """The configuration is invalid.

    ``problems`` holds one line per mistake, each starting with the key it is
    about; ``str(error)`` lists them all, one per line.
    """

    def __init__(self, problems: str | Sequence[str], path: Path | None = None) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.path = path
        prefix = f"{path}: " if path is not None else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems:\n" + "\n".join(
                f"  {problem}" for problem in self.problems
            )
        super().__init__(message)


def load(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and check the config file at ``path``.

    ``env`` is where ``*_env`` keys are looked up (default: ``os.environ``).
    Raises :class:`ConfigError` listing every problem found.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("no such config file", path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", path) from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file: {error.strerror}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid TOML: the file is not UTF-8", path) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}", path) from None
    check = Check(path.absolute().parent, os.environ if env is None else env)
    config = _config(check, path, raw)
    if check.problems or config is None:
        raise ConfigError(list(dict.fromkeys(check.problems)), path)
    return config


def _config(check: Check, path: Path, raw: dict[str, Any]) -> Config | None:
    top, _ = check_fields(Config, raw, "", check, also=SECTIONS)
    late, dedupe = top.get("late_window"), top.get("dedupe_window")
    if late is not None and dedupe is not None and dedupe < late:
        check.problem(
            "dedupe_window",
            f"{dedupe} is shorter than late_window ({late}); it must be at least as long,"
            " or a late re-send could be counted twice",
        )
    ingest, ingest_values = _section(check, raw, "ingest", IngestConfig)
    api, api_values = _section(check, raw, "api", ApiConfig)
    listens = ingest_values.get("listen"), api_values.get("listen")
    if listens[0] is not None and listens[1] is not None and listens[0].overlaps(listens[1]):
        check.problem(
            "api.listen", f"{listens[1]} overlaps ingest.listen ({listens[0]}); use another port"
        )
    store, _ = _section(check, raw, "store", StoreConfig)
    accounts, _ = _section(check, raw, "accounts", AccountsConfig)
    partitions, _ = _section(check, raw, "partitions", PartitionsConfig)
    cluster: ClusterConfig | None = None
    if "cluster" in raw:  # absent: a single node (docs/cluster.md)
        cluster, _ = _section(check, raw, "cluster", ClusterConfig)
    meters, declared = _meters(check, raw.get("meters", ABSENT))
    producers = _producers(
        check, raw.get("producers", ABSENT), declared, api_values.get("admin_token")
    )
    billing, _ = _section(check, raw, "billing", BillingConfig)
    prices = check_prices(check, raw.get("prices", ABSENT), {m.name: m for m in meters}, declared)
    webhooks, alerts = check_alerts(
        check,
        raw.get("webhooks", ABSENT),
        raw.get("alerts", ABSENT),
        {m.name: m for m in meters},
        declared,
    )
    if raw.get("producers", []) == []:
        check.warnings.append("producers: none configured; every producer will be refused")
    if raw.get("meters", []) == []:
        check.warnings.append("meters: none configured; every event will be rejected")
    if (
        ingest is None
        or api is None
        or store is None
        or accounts is None
        or partitions is None
        or billing is None
        or check.problems
    ):
        return None
    return Config(
        path=path,
        ingest=ingest,
        api=api,
        store=store,
        accounts=accounts,
        partitions=partitions,
        cluster=cluster,
        producers=producers,
        meters=meters,
        billing=billing,
        prices=prices,
        webhooks=webhooks,
        alerts=alerts,
        warnings=tuple(check.warnings),
        **top,
    )


def _section(
    check: Check, raw: Mapping[str, object], name: str, cls: type[T]
) -> tuple[T | None, dict[str, Any]]:
    """The table ``[name]`` as a ``cls`` (None after reporting its problems), and its valid
    values (for the rules between tables)."""
    table = check.table(name, raw.get(name, ABSENT))
    values, ok = check_fields(cls, table, name, check)
    ok = _section_rules(check, name, table, values) and ok
    return (cls(**values) if ok else None), values


def _section_rules(
    check: Check, name: str, table: Mapping[str, object], values: dict[str, Any]
) -> bool:
    if name in ("ingest", "api"):
        tls_asked, ok = check_tls(check, name, table, values)
        listen = values.get("listen")
        if listen is not None and not tls_asked and not listen.is_loopback:
            check.warn(
                f"{name}.listen",
                f"{listen} is not a loopback address and TLS is off (no tls_cert/tls_key):"
                " tokens and usage cross the network unencrypted",
            )
        return ok
    if name == "partitions":
        return _partition_rules(check, values)
    if name == "cluster":
        return _cluster_rules(check, values)
    path = values.get("path")
    if name in ("store", "billing") and path is not None and path.is_dir():
        check.problem(f"{name}.path", f"{path} is a directory; give the database file's path")
        return False
    return True


def _partition_rules(check: Check, values: dict[str, Any]) -> bool:
    count, size, owners = values.get("count"), values.get("shard_size"), values.get("owners")
    if count is None or size is None:
        return True
    if count % size:
        check.problem(
            "partitions.shard_size",
            f"{size} does not divide partitions.count ({count}); every shard holds the same"
            " number of partitions",
        )
        return False
    if isinstance(owners, AutoOwners) and owners > count // size:
        values["owners"] = AutoOwners(count // size)  # "auto": at most one owner per shard
    elif owners is not None and owners > count // size:
        check.problem(
            "partitions.owners",
            f"{owners} is more than the {count // size} shards (count / shard_size); an owner"
            " holds whole shards",
        )
        return False
    return True


def _cluster_rules(check: Check, values: Mapping[str, Any]) -> bool:
    retention, interval = values.get("retention"), values.get("snapshot_interval")
    if retention is not None and interval is not None and retention.ms < 2 * interval.ms:
        check.problem(
            "cluster.retention",
            f"{retention} is shorter than twice cluster.snapshot_interval ({interval}): a new"
            " owner restores the latest snapshot and replays the log after it, so the log must"
            " keep at least two snapshot intervals; raise retention or lower snapshot_interval",
        )
        return False
    urls = values.get("nats")
    if urls is None:
        return True
    if not urls:
        check.problem(
            "cluster.nats",
            "is empty; give the URLs of the NATS servers, e.g."
            ' ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]',
        )
        return False
    ok = True
    for index, url in enumerate(urls):
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            check.problem(
                f"cluster.nats[{index}]",
                f"{url!r} is not a NATS URL; write nats://HOST:PORT (or tls://HOST:PORT)",
            )
            ok = False
    return ok


def _meters(check: Check, value: object) -> tuple[tuple[Meter, ...], set[str] | None]:
    """The valid meters, and every name declared (None when not every name is known)."""
    tables = check.array_of_tables("meters", value)
    names = [n for _, t in tables if isinstance(n := t.get("name"), str) and n]
    complete = value is ABSENT or (isinstance(value, list) and len(names) == len(value))
    declared = set(names)
    meters: list[Meter] = []
    seen: dict[str, str] = {}
    for prefix, table in tables:
        values, ok = check_fields(Meter, table, prefix, check)
        name = values.get("name")
        ok = check.unique_name(prefix, name, seen) and ok
        aggregation, unique = values.get("aggregation"), values.get("unique_property", ABSENT)
        if aggregation is Aggregation.UNIQUE_COUNT and unique is None:
            check.problem(
                f"{prefix}.unique_property",
                "missing: aggregation 'unique_count' needs the property whose values to count",
            )
            ok = False
        elif aggregation not in (None, Aggregation.UNIQUE_COUNT) and unique not in (None, ABSENT):
            check.problem(
                f"{prefix}.unique_property",
                f"only allowed with aggregation 'unique_count', not {aggregation.value!r}",
            )
            ok = False
        ok = _no_repeats(check, f"{prefix}.dimensions", table.get("dimensions")) and ok
        if ok:
            meters.append(Meter(**values))
    return tuple(meters), declared if complete else None


def _no_repeats(check: Check, key: str, items: object) -> bool:
    if not isinstance(items, list):
        return True
    repeated = [item for index, item in enumerate(items) if item in items[:index]]
    for item in dict.fromkeys(repeated):
        check.problem(key, f"{show(item)} is listed more than once")
    return not repeated


def _producers(
    check: Check, value: object, declared: set[str] | None, admin: str | None
) -> tuple[Producer, ...]:
    producers: list[Producer] = []
    names: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for prefix, table in check.array_of_tables("producers", value):
        values, ok = check_fields(Producer, table, prefix, check)
        name, token = values.get("name"), values.get("token")
        ok = check.unique_name(prefix, name, names) and ok
        if token is not None:
            token_key = f"{prefix}.token_env" if "token_env" in table else f"{prefix}.token"
            if admin is not None and hmac.compare_digest(token_digest(token), token_digest(admin)):
                check.problem(
                    token_key, "the same token as api.admin_token; a producer needs its own"
                )
                ok = False
            elif token in tokens:
                check.problem(
                    token_key, f"the same token as {tokens[token]}; each producer needs its own"
                )
                ok = False
            else:
                tokens[token] = f"{prefix} ({name})" if name else prefix
        ok = _producer_meters(check, f"{prefix}.meters", table.get("meters"), declared) and ok
        if ok:
            producers.append(Producer(**values))
    return tuple(producers)


def _producer_meters(check: Check, key: str, value: object, declared: set[str] | None) -> bool:
    if not isinstance(value, list):
        return True  # absent (every meter), or not an array: reported already
    if not value:
        check.problem(key, "an empty list permits no meter; leave the key out to permit all")
        return False
    unknown = [
        item
        for item in dict.fromkeys(value)
        if isinstance(item, str) and declared is not None and item not in declared
    ]
    for item in unknown:
        hint = suggest(item, sorted(declared or ()))
        check.problem(key, f"{item!r} is not a configured meter{hint}")
    return not unknown and _no_repeats(check, key, value)
