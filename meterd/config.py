"""Loading ``config.toml`` (protocol.md §1).

This first version checks what ``meterd run`` needs to start; the full
validation of producers and meters comes with the accounts issue. Every problem
is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    ingest_listen: Listen
    api_listen: Listen
    store_path: Path
    raw: dict[str, Any]


def parse_listen(key: str, value: object) -> Listen:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected 'HOST:PORT', got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: expected 'HOST:PORT' with a port 1-65535, got {value!r}")
    return Listen(host, int(port_text))


def load(path: Path) -> Config:
    """Read and check the config file at ``path``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    ingest = raw.get("ingest", {})
    api = raw.get("api", {})
    store = raw.get("store", {})
    for key, table in (("ingest", ingest), ("api", api), ("store", store)):
        if not isinstance(table, dict):
            raise ConfigError(f"[{key}]: expected a table")
    store_path = store.get("path", "var/meterd.sqlite3")
    if not isinstance(store_path, str) or not store_path:
        raise ConfigError(f"store.path: expected a file path, got {store_path!r}")
    return Config(
        path=path,
        ingest_listen=parse_listen("ingest.listen", ingest.get("listen", "127.0.0.1:8700")),
        api_listen=parse_listen("api.listen", api.get("listen", "127.0.0.1:8701")),
        store_path=(path.parent / store_path).resolve(),
        raw=raw,
    )
