"""Loading and checking ``config.toml`` (protocol.md §1).

:func:`load` reads the file with :mod:`tomllib`, checks every key and either
returns a :class:`Config` or raises one :class:`ConfigError` that lists every
problem found, one per line, each naming its key (``meters[2].aggregation``;
array indices count from 0) and what is wrong with it. Unknown keys are
problems too, so that a typo never passes silently.

Secrets (``api.admin_token`` and the producers' tokens, given in the file or
through ``*_env`` environment variables) never appear in an error message or in
a ``repr``.

The price book (``[[prices]]``) and ``[billing]`` are described in docs/billing.md; unit
prices and caps are decimal *strings* (a TOML float is inexact and refused).

Durations (``late_window``, ``dedupe_window``) are written ``"35d"``, ``"12h"``,
``"90m"``, ``"30s"``, ``"500ms"`` or as an integer number of seconds, and are
kept as integer milliseconds. The ``*_interval``/``*_timeout``/``max_seconds``
settings take a number of seconds (or the same duration syntax) and are kept
as float seconds.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path

from meterd.billing import PriceRule, QuantityRounding, RoundingMode
from meterd.model import DAY_MS, HOUR_MS, MINUTE_MS, Aggregation, Meter

DEFAULT_INGEST_LISTEN = "127.0.0.1:8700"
DEFAULT_API_LISTEN = "127.0.0.1:8701"
DEFAULT_STORE_PATH = "var/meterd.sqlite3"
DEFAULT_BILLING_FILE = "billing.sqlite3"  # beside the store unless [billing] path says otherwise
DEFAULT_WINDOW_MS = 35 * DAY_MS
MAX_WINDOW_MS = 3650 * DAY_MS
MAX_DIMENSIONS = 16
MAX_PROPERTY_KEY = 64  # protocol.md §2.2: property keys are at most 64 characters

METER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PRODUCER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what fits in "Authorization: Bearer <token>"
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_AGGREGATIONS = ", ".join(a.value for a in Aggregation)
_ROUNDING_BY_NAME = {mode.value: mode for mode in RoundingMode}
_ROUNDING_MODES = ", ".join(_ROUNDING_BY_NAME)
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")
_PRICE_KEYS = (
    "meter",
    "unit_price",
    "match",
    "effective_from",
    "round_places",
    "rounding",
    "monthly_cap",
    "daily_cap",
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


@dataclass(frozen=True, slots=True)
class Listen:
    """A ``HOST:PORT`` to bind; ``host`` holds an IPv6 address without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """The host a client on this machine connects to, bracketed if IPv6: an unspecified
        bind address (``0.0.0.0``, ``::``) accepts connections on loopback."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
        host = self.host.lower()
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host.partition("%")[0]).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Tls:
    """A PEM certificate (chain) and its unencrypted private key, both checked at load."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context holding this certificate and key."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key, password=_no_password)
        return context


@dataclass(frozen=True, slots=True)
class IngestConfig:
    listen: Listen
    tls: Tls | None = None
    max_frame_bytes: int = 1_048_576
    max_batch: int = 1000
    window: int = 64
    max_in_flight_events: int = 20_000  # daemon-wide: events read and not yet applied
    # A producer silent this long while the server waits for its next frame is pinged...
    keepalive_interval: float = 30.0  # seconds
    # ...and dropped if the pong (or the reading of an ack it is sent) takes longer than this.
    keepalive_timeout: float = 30.0  # seconds


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: Listen
    admin_token: str = field(repr=False)
    tls: Tls | None = None

    def is_admin_token(self, token: str) -> bool:
        """Whether ``token`` is the admin token (constant-time comparison)."""
        return hmac.compare_digest(_token_digest(token), _token_digest(self.admin_token))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    checkpoint_interval: float = 30.0  # seconds; the journal covers recovery meanwhile
    commit_interval_ms: int = 2
    index_cycle: float = 5.0  # seconds between two index passes over the same accounts
    # At most one write-ahead-log checkpoint per this many ms, off the commit path;
    # 0: SQLite's own, inside the commit that passes 1,000 pages.
    wal_checkpoint_interval_ms: int = 100


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    idle_timeout: float = 300.0  # seconds
    mailbox_size: int = 1024
    max_restarts: int = 50  # the meters supervisor: many independent children
    max_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """``[billing]``: ``path`` None means ``billing.sqlite3`` beside the store."""

    path: Path | None = None
    currency: str = "USD"
    amount_places: int = 2  # amounts are rounded to this many places (cents)


@dataclass(frozen=True, slots=True)
class Producer:
    """One ``[[producers]]`` entry. ``meters`` is None when it may write every meter."""

    name: str
    token: str = field(repr=False)
    meters: frozenset[str] | None = None

    def may_write(self, meter: str) -> bool:
        return self.meters is None or meter in self.meters


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    ingest: IngestConfig
    api: ApiConfig
    store: StoreConfig
    accounts: AccountsConfig = AccountsConfig()
    late_window_ms: int = DEFAULT_WINDOW_MS
    dedupe_window_ms: int = DEFAULT_WINDOW_MS
    producers: tuple[Producer, ...] = ()
    meters: tuple[Meter, ...] = ()
    billing: BillingConfig = BillingConfig()
    prices: tuple[PriceRule, ...] = ()
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
        presented = _token_digest(token)
        found: Producer | None = None
        for producer in self.producers:
            if hmac.compare_digest(presented, _token_digest(producer.token)):
                found = producer
        return found


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
    loader = _Loader(path, os.environ if env is None else env)
    config = loader.config(raw)
    if loader.problems:
        raise ConfigError(list(dict.fromkeys(loader.problems)), path)
    return config


def format_duration(ms: int) -> str:
    """``ms`` in the largest whole unit: ``35d``, ``90m``, ``1500ms``."""
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_listen(key: str, value: object) -> Listen:
    """Parse one ``HOST:PORT`` value; raises :class:`ConfigError` naming ``key``."""
    problems: list[str] = []
    listen = _parse_listen(problems, key, value)
    if listen is None:
        raise ConfigError(problems)
    return listen


# --- implementation ---------------------------------------------------------------------------


class _NoPassword(Exception):
    """Raised by OpenSSL's password callback: the key is encrypted."""


class _Missing:
    """A key that is absent."""


class _Bad:
    """A value that was given and is invalid (the problem is recorded already)."""


_MISSING = _Missing()
_BAD = _Bad()


def _no_password() -> str:
    raise _NoPassword


def _token_digest(token: str) -> bytes:
    """A fixed-length digest of ``token``, so that comparing two does not leak their lengths."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _key(prefix: str, name: str) -> str:
    name_text = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
    return f"{prefix}.{name_text}" if prefix else name_text


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _got(value: object) -> str:
    """``got a string ('x')``: the kind of a (non-secret) value and the value itself."""
    if isinstance(value, dict | list):
        return f"got {_kind(value)}"
    return f"got {_kind(value)} ({_show(value)})"


def _suggest(name: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_listen(problems: list[str], key: str, value: object) -> Listen | None:
    expected = "expected 'HOST:PORT' (IPv6 as '[::1]:8700')"
    if not isinstance(value, str):
        problems.append(f"{key}: {expected}, {_got(value)}")
        return None
    if value.startswith("["):
        match = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
        if match is None:
            problems.append(f"{key}: {expected}, got {_show(value)}")
            return None
        host, port_text = match[1], match[2]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            problems.append(f"{key}: {host!r} in brackets is not an IPv6 address")
            return None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            problems.append(f"{key}: {expected}, got {_show(value)}")
            return None
        if ":" in host:
            problems.append(
                f"{key}: an IPv6 address needs brackets, e.g. '[{host}]:{port_text}',"
                f" got {_show(value)}"
            )
            return None
        if not host:
            problems.append(f"{key}: the host is missing, got {_show(value)}")
            return None
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                problems.append(f"{key}: {host!r} is not an IPv4 address")
                return None
        elif not _HOSTNAME.fullmatch(host):
            problems.append(f"{key}: {host!r} is not a host name or IP address")
            return None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        problems.append(f"{key}: the port must be a number 1-65535, got {_show(value)}")
        return None
    return Listen(host, int(port_text))


def _addresses_overlap(a: Listen, b: Listen) -> bool:
    if a.port != b.port:
        return False
    if a.host.lower() == b.host.lower() or "::" in (a.host, b.host):
        return True
    for wildcard, other in ((a, b), (b, a)):
        if wildcard.host == "0.0.0.0" and ":" not in other.host:
            return True
    return False


class _Loader:
    """Checks a parsed TOML document, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.base = path.absolute().parent
        self.env = env
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{key}: {text}")

    # -- generic checks ------------------------------------------------------------------------

    def unknown_keys(
        self, prefix: str, table: Mapping[str, object], allowed: Sequence[str]
    ) -> None:
        for name in table:
            if name not in allowed:
                hint = _suggest(name, allowed) or f" (expected one of {', '.join(allowed)})"
                self.problem(_key(prefix, name), f"unknown key{hint}")

    def table(self, key: str, value: object) -> dict[str, object]:
        if isinstance(value, _Missing):
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"expected a table ([{key}]), got {_kind(value)}")
            return {}
        return value

    def array_of_tables(self, key: str, value: object) -> list[tuple[str, dict[str, object]]]:
        if isinstance(value, _Missing):
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected an array of tables ([[{key}]]), got {_kind(value)}")
            return []
        tables = []
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            if isinstance(item, dict):
                tables.append((item_key, item))
            else:
                self.problem(item_key, f"expected a table ([[{key}]]), got {_kind(item)}")
        return tables

    def string(self, key: str, value: object) -> str | None:
        if not isinstance(value, str):
            self.problem(key, f"expected a string, {_got(value)}")
            return None
        if not value:
            self.problem(key, "must not be empty")
            return None
        return value

    def integer(self, key: str, value: object, default: int, low: int, high: int) -> int:
        if isinstance(value, _Missing):
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected an integer, {_got(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}, got {value}")
            return default
        return value

    def duration_ms(self, key: str, value: object, *, allow_float: bool = False) -> int | None:
        """A duration as integer milliseconds; None (and a problem) when invalid."""
        expected = "expected a duration like '35d', '12h', '90m', '30s' or a number of seconds"
        ms: int
        if isinstance(value, bool):
            self.problem(key, f"{expected}, {_got(value)}")
            return None
        if isinstance(value, int):
            ms = value * 1000
        elif isinstance(value, float) and allow_float:
            if not math.isfinite(value * 1000):
                self.problem(key, f"{expected}, {_got(value)}")
                return None
            ms = round(value * 1000)
            if ms <= 0 < value:
                ms = 1  # a positive duration under a millisecond: keep it positive
        elif isinstance(value, str):
            match = _DURATION.fullmatch(value)
            if match is None:
                self.problem(key, f"{expected}, got {_show(value)}")
                return None
            ms = int(match[1]) * _DURATION_UNITS[match[2]]
        else:
            self.problem(key, f"{expected}, {_got(value)}")
            return None
        if ms <= 0:
            self.problem(key, f"must be longer than 0, got {_show(value)}")
            return None
        if ms > MAX_WINDOW_MS:
            self.problem(
                key, f"must be at most {format_duration(MAX_WINDOW_MS)}, got {_show(value)}"
            )
            return None
        return ms

    def seconds(self, key: str, value: object, default: float) -> float:
        if isinstance(value, _Missing):
            return default
        ms = self.duration_ms(key, value, allow_float=True)
        return default if ms is None else ms / 1000

    def secret(self, prefix: str, table: Mapping[str, object], name: str) -> tuple[str, str] | None:
        """``name`` or ``name_env`` of ``table``: (the key it came from, the secret).

        Problems name the key and never the secret's value.
        """
        env_name = f"{name}_env"
        key, env_key = _key(prefix, name), _key(prefix, env_name)
        value, env_value = table.get(name, _MISSING), table.get(env_name, _MISSING)
        if not isinstance(value, _Missing) and not isinstance(env_value, _Missing):
            self.problem(key, f"give either {name} or {env_name}, not both")
            return None
        if not isinstance(value, _Missing):
            if not isinstance(value, str):
                self.problem(key, f"expected a string, got {_kind(value)}")
                return None
            return self.token_text(key, value, "")
        if not isinstance(env_value, _Missing):
            if not isinstance(env_value, str):
                self.problem(env_key, f"expected an environment variable name, {_got(env_value)}")
                return None
            if not _ENV_NAME.fullmatch(env_value):
                self.problem(env_key, f"{_show(env_value)} is not an environment variable name")
                return None
            token = self.env.get(env_value)
            if token is None:
                self.problem(env_key, f"environment variable {env_value!r} is not set")
                return None
            return self.token_text(env_key, token, f"environment variable {env_value!r} ")
        self.problem(key, f'missing (give {name} = "..." or {env_name} = "VARIABLE")')
        return None

    def token_text(self, key: str, token: str, source: str) -> tuple[str, str] | None:
        if not token:
            self.problem(key, f"{source or 'the token '}is empty")
            return None
        if not _TOKEN.fullmatch(token):
            self.problem(
                key,
                f"{source or 'the token '}must hold printable ASCII without spaces"
                " (the token travels in an 'Authorization: Bearer' header)",
            )
            return None
        return key, token

    def file(self, key: str, value: object) -> Path | None:
        text = self.string(key, value)
        if text is None:
            return None
        if "\x00" in text:
            self.problem(key, "a path cannot contain a NUL character")
            return None
        try:
            return (self.base / text).resolve()
        except (OSError, RuntimeError) as error:
            self.problem(key, f"cannot resolve the path {_show(text)}: {error}")
            return None

    # -- sections ------------------------------------------------------------------------------

    def tls(self, prefix: str, table: Mapping[str, object]) -> tuple[Tls | None, bool]:
        """(the checked Tls or None, whether TLS was asked for at all)."""
        cert_value, key_value = table.get("tls_cert", _MISSING), table.get("tls_key", _MISSING)
        cert_key, key_key = _key(prefix, "tls_cert"), _key(prefix, "tls_key")
        if isinstance(cert_value, _Missing) and isinstance(key_value, _Missing):
            return None, False
        if isinstance(cert_value, _Missing) or isinstance(key_value, _Missing):
            missing, given = (
                (cert_key, key_key) if isinstance(cert_value, _Missing) else (key_key, cert_key)
            )
            self.problem(missing, f"missing: {given} is set, and the two go together")
            return None, True
        cert, key = self.file(cert_key, cert_value), self.file(key_key, key_value)
        readable = True
        for item_key, item in ((cert_key, cert), (key_key, key)):
            if item is None:
                readable = False
            elif not item.is_file():
                self.problem(item_key, f"no such file: {item}")
                readable = False
            elif not os.access(item, os.R_OK):
                self.problem(item_key, f"cannot read {item}: permission denied")
                readable = False
        if not readable or cert is None or key is None:
            return None, True
        tls = Tls(cert, key)
        try:
            tls.server_context()
        except _NoPassword:
            self.problem(
                key_key, "the private key is encrypted; meterd needs an unencrypted PEM key"
            )
            return None, True
        except ssl.SSLError as error:
            self.tls_error(cert_key, key_key, cert, error)
            return None, True
        except OSError as error:
            self.problem(cert_key, f"cannot load the certificate and key: {error.strerror}")
            return None, True
        return tls, True

    def tls_error(self, cert_key: str, key_key: str, cert: Path, error: ssl.SSLError) -> None:
        if error.reason == "KEY_VALUES_MISMATCH":
            self.problem(key_key, f"does not match the certificate in {cert_key}")
            return
        try:
            ssl.create_default_context().load_verify_locations(cafile=cert)
        except (ssl.SSLError, OSError):
            self.problem(cert_key, "not a PEM certificate")
        else:
            self.problem(key_key, "not a PEM private key")

    def listen(self, key: str, value: object, default: str) -> tuple[Listen, bool]:
        listen = _parse_listen(
            self.problems, key, default if isinstance(value, _Missing) else value
        )
        if listen is None:
            fallback = _parse_listen([], key, default)
            assert fallback is not None
            return fallback, False
        return listen, True

    def warn_plaintext(self, key: str, listen: Listen, tls_asked: bool) -> None:
        if not tls_asked and not listen.is_loopback:
            self.warnings.append(
                f"{key}: {listen} is not a loopback address and TLS is off (no tls_cert/tls_key):"
                " tokens and usage cross the network unencrypted"
            )

    def ingest(self, value: object) -> tuple[IngestConfig, bool]:
        table = self.table("ingest", value)
        self.unknown_keys(
            "ingest",
            table,
            (
                "listen",
                "tls_cert",
                "tls_key",
                "max_frame_bytes",
                "max_batch",
                "window",
                "max_in_flight_events",
                "keepalive_interval",
                "keepalive_timeout",
            ),
        )
        listen, listen_ok = self.listen(
            "ingest.listen", table.get("listen", _MISSING), DEFAULT_INGEST_LISTEN
        )
        tls, tls_asked = self.tls("ingest", table)
        if listen_ok:
            self.warn_plaintext("ingest.listen", listen, tls_asked)
        defaults = IngestConfig(listen)
        return (
            IngestConfig(
                listen=listen,
                tls=tls,
                max_frame_bytes=self.integer(
                    "ingest.max_frame_bytes",
                    table.get("max_frame_bytes", _MISSING),
                    defaults.max_frame_bytes,
                    1024,
                    64 * 1024 * 1024,
                ),
                max_batch=self.integer(
                    "ingest.max_batch",
                    table.get("max_batch", _MISSING),
                    defaults.max_batch,
                    1,
                    100_000,
                ),
                window=self.integer(
                    "ingest.window", table.get("window", _MISSING), defaults.window, 1, 65_536
                ),
                max_in_flight_events=self.integer(
                    "ingest.max_in_flight_events",
                    table.get("max_in_flight_events", _MISSING),
                    defaults.max_in_flight_events,
                    1,
                    100_000_000,
                ),
                keepalive_interval=self.seconds(
                    "ingest.keepalive_interval",
                    table.get("keepalive_interval", _MISSING),
                    defaults.keepalive_interval,
                ),
                keepalive_timeout=self.seconds(
                    "ingest.keepalive_timeout",
                    table.get("keepalive_timeout", _MISSING),
                    defaults.keepalive_timeout,
                ),
            ),
            listen_ok,
        )

    def api(self, value: object) -> tuple[ApiConfig, bool, str | None]:
        table = self.table("api", value)
        self.unknown_keys(
            "api", table, ("listen", "admin_token", "admin_token_env", "tls_cert", "tls_key")
        )
        listen, listen_ok = self.listen(
            "api.listen", table.get("listen", _MISSING), DEFAULT_API_LISTEN
        )
        secret = self.secret("api", table, "admin_token")
        tls, tls_asked = self.tls("api", table)
        if listen_ok:
            self.warn_plaintext("api.listen", listen, tls_asked)
        token = secret[1] if secret else None
        return ApiConfig(listen=listen, admin_token=token or "", tls=tls), listen_ok, token

    def store(self, value: object) -> StoreConfig:
        table = self.table("store", value)
        self.unknown_keys(
            "store",
            table,
            (
                "path",
                "checkpoint_interval",
                "commit_interval_ms",
                "index_cycle",
                "wal_checkpoint_interval_ms",
            ),
        )
        path = self.file("store.path", table.get("path", DEFAULT_STORE_PATH))
        if path is not None and path.is_dir():
            self.problem("store.path", f"{path} is a directory; give the database file's path")
        defaults = StoreConfig(Path())
        return StoreConfig(
            path=path or (self.base / DEFAULT_STORE_PATH),
            checkpoint_interval=self.seconds(
                "store.checkpoint_interval",
                table.get("checkpoint_interval", _MISSING),
                defaults.checkpoint_interval,
            ),
            commit_interval_ms=self.integer(
                "store.commit_interval_ms",
                table.get("commit_interval_ms", _MISSING),
                defaults.commit_interval_ms,
                0,
                1000,
            ),
            index_cycle=self.index_cycle(table.get("index_cycle", _MISSING), defaults.index_cycle),
            wal_checkpoint_interval_ms=self.integer(
                "store.wal_checkpoint_interval_ms",
                table.get("wal_checkpoint_interval_ms", _MISSING),
                defaults.wal_checkpoint_interval_ms,
                0,
                60_000,
            ),
        )

    def index_cycle(self, value: object, default: float) -> float:
        seconds = self.seconds("store.index_cycle", value, default)
        if not 0.001 <= seconds <= 3600:
            # Memory holds about ingest rate x cycle rows; under a millisecond is no cycle.
            self.problem("store.index_cycle", f"must be between 1 ms and 1 hour, got {seconds:g} s")
            return default
        return seconds

    def accounts(self, value: object) -> AccountsConfig:
        table = self.table("accounts", value)
        self.unknown_keys(
            "accounts", table, ("idle_timeout", "mailbox_size", "max_restarts", "max_seconds")
        )
        defaults = AccountsConfig()
        return AccountsConfig(
            idle_timeout=self.seconds(
                "accounts.idle_timeout", table.get("idle_timeout", _MISSING), defaults.idle_timeout
            ),
            mailbox_size=self.integer(
                "accounts.mailbox_size",
                table.get("mailbox_size", _MISSING),
                defaults.mailbox_size,
                1,
                1_000_000,
            ),
            max_restarts=self.integer(
                "accounts.max_restarts",
                table.get("max_restarts", _MISSING),
                defaults.max_restarts,
                0,
                1_000_000,
            ),
            max_seconds=self.seconds(
                "accounts.max_seconds", table.get("max_seconds", _MISSING), defaults.max_seconds
            ),
        )

    def windows(self, raw: Mapping[str, object]) -> tuple[int, int]:
        late: int | None = DEFAULT_WINDOW_MS
        dedupe: int | None = DEFAULT_WINDOW_MS
        if "late_window" in raw:
            late = self.duration_ms("late_window", raw["late_window"])
        if "dedupe_window" in raw:
            dedupe = self.duration_ms("dedupe_window", raw["dedupe_window"])
        if late is not None and dedupe is not None and dedupe < late:
            self.problem(
                "dedupe_window",
                f"{format_duration(dedupe)} is shorter than late_window ({format_duration(late)});"
                " it must be at least as long, or a late re-send could be counted twice",
            )
        return late or DEFAULT_WINDOW_MS, dedupe or DEFAULT_WINDOW_MS

    def meters(self, value: object) -> tuple[tuple[Meter, ...], set[str] | None]:
        """The valid meters, and every name declared (None when not every name is known)."""
        if not isinstance(value, _Missing | list):
            self.array_of_tables("meters", value)
            return (), None
        meters: list[Meter] = []
        declared: set[str] = set()
        complete = True  # every entry is a table with a name: references can be checked
        seen: dict[str, str] = {}
        tables = self.array_of_tables("meters", value)
        if isinstance(value, list) and len(tables) != len(value):
            complete = False
        for prefix, table in tables:
            self.unknown_keys(
                prefix, table, ("name", "aggregation", "unique_property", "dimensions")
            )
            ok = True
            name = self.required_string(prefix, table, "name")
            if name is None:
                complete = False
            else:
                declared.add(name)
                if not METER_NAME.fullmatch(name):
                    self.problem(
                        f"{prefix}.name",
                        f"{_show(name)} is not a valid meter name (1-64 characters of a-z, 0-9,"
                        " '.', '_', '-', starting with a letter or digit)",
                    )
                    ok = False
                elif name in seen:
                    self.problem(f"{prefix}.name", f"{name!r} is already the name of {seen[name]}")
                    ok = False
                else:
                    seen[name] = prefix
            ok = ok and name is not None
            aggregation = self.aggregation(prefix, table)
            unique_property = self.unique_property(prefix, table, aggregation)
            dimensions = self.dimensions(f"{prefix}.dimensions", table.get("dimensions", _MISSING))
            if (
                ok
                and name
                and aggregation
                and not isinstance(unique_property, _Bad)
                and dimensions is not None
            ):
                meters.append(Meter(name, aggregation, dimensions, unique_property))
        return tuple(meters), declared if complete else None

    def required_string(self, prefix: str, table: Mapping[str, object], name: str) -> str | None:
        if name not in table:
            self.problem(_key(prefix, name), "missing")
            return None
        return self.string(_key(prefix, name), table[name])

    def aggregation(self, prefix: str, table: Mapping[str, object]) -> Aggregation | None:
        key = f"{prefix}.aggregation"
        if "aggregation" not in table:
            self.problem(key, f"missing (one of {_AGGREGATIONS})")
            return None
        value = table["aggregation"]
        if not isinstance(value, str):
            self.problem(key, f"expected a string (one of {_AGGREGATIONS}), {_got(value)}")
            return None
        try:
            return Aggregation(value)
        except ValueError:
            self.problem(key, f"{_show(value)} is not one of {_AGGREGATIONS}")
            return None

    def unique_property(
        self, prefix: str, table: Mapping[str, object], aggregation: Aggregation | None
    ) -> str | _Bad | None:
        key = f"{prefix}.unique_property"
        value = table.get("unique_property", _MISSING)
        if isinstance(value, _Missing):
            if aggregation is Aggregation.UNIQUE_COUNT:
                self.problem(
                    key,
                    "missing: aggregation 'unique_count' needs the property whose values to count",
                )
                return _BAD
            return None
        if aggregation is not None and aggregation is not Aggregation.UNIQUE_COUNT:
            self.problem(
                key, f"only allowed with aggregation 'unique_count', not {aggregation.value!r}"
            )
            return _BAD
        text = self.string(key, value)
        if text is None:
            return _BAD
        if len(text) > MAX_PROPERTY_KEY:
            self.problem(key, f"a property name is at most {MAX_PROPERTY_KEY} characters")
            return _BAD
        return text

    def dimensions(self, key: str, value: object) -> tuple[str, ...] | None:
        if isinstance(value, _Missing):
            return ()
        if not isinstance(value, list):
            self.problem(key, f"expected an array of property names, {_got(value)}")
            return None
        ok = True
        names: list[str] = []
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            text = self.string(item_key, item)
            if text is None:
                ok = False
            elif len(text) > MAX_PROPERTY_KEY:
                self.problem(item_key, f"a property name is at most {MAX_PROPERTY_KEY} characters")
                ok = False
            elif text in names:
                self.problem(key, f"{text!r} is listed more than once")
                ok = False
            else:
                names.append(text)
        if len(value) > MAX_DIMENSIONS:
            self.problem(key, f"at most {MAX_DIMENSIONS} dimensions, got {len(value)}")
            ok = False
        return tuple(names) if ok else None

    def producers(
        self, value: object, declared_meters: set[str] | None, admin: str | None
    ) -> tuple[Producer, ...]:
        producers: list[Producer] = []
        names: dict[str, str] = {}
        tokens: dict[str, str] = {}
        for prefix, table in self.array_of_tables("producers", value):
            self.unknown_keys(prefix, table, ("name", "token", "token_env", "meters"))
            ok = True
            name = self.required_string(prefix, table, "name")
            if name is not None:
                if not PRODUCER_NAME.fullmatch(name):
                    self.problem(
                        f"{prefix}.name",
                        f"{_show(name)} is not a valid producer name (1-64 characters of A-Z, a-z,"
                        " 0-9, '.', '_', '-', starting with a letter or digit)",
                    )
                    ok = False
                elif name in names:
                    self.problem(f"{prefix}.name", f"{name!r} is already the name of {names[name]}")
                    ok = False
                else:
                    names[name] = prefix
            secret = self.secret(prefix, table, "token")
            if secret is not None:
                token_key, token = secret
                if admin is not None and hmac.compare_digest(
                    _token_digest(token), _token_digest(admin)
                ):
                    self.problem(
                        token_key, "the same token as api.admin_token; a producer needs its own"
                    )
                    ok = False
                elif token in tokens:
                    self.problem(
                        token_key, f"the same token as {tokens[token]}; each producer needs its own"
                    )
                    ok = False
                else:
                    tokens[token] = f"{prefix} ({name})" if name else prefix
            meters = self.producer_meters(
                f"{prefix}.meters", table.get("meters", _MISSING), declared_meters
            )
            if ok and name is not None and secret is not None and not isinstance(meters, _Bad):
                producers.append(Producer(name, secret[1], meters))
        return tuple(producers)

    def producer_meters(
        self, key: str, value: object, declared: set[str] | None
    ) -> frozenset[str] | _Bad | None:
        if isinstance(value, _Missing):
            return None
        if not isinstance(value, list):
            self.problem(key, f"expected an array of meter names, {_got(value)}")
            return _BAD
        if not value:
            self.problem(key, "an empty list permits no meter; leave the key out to permit all")
            return _BAD
        ok = True
        names: set[str] = set()
        for index, item in enumerate(value):
            text = self.string(f"{key}[{index}]", item)
            if text is None:
                ok = False
            elif text in names:
                self.problem(key, f"{text!r} is listed more than once")
                ok = False
            elif declared is not None and text not in declared:
                self.problem(
                    key, f"{text!r} is not a configured meter{_suggest(text, sorted(declared))}"
                )
                ok = False
            else:
                names.add(text)
        return frozenset(names) if ok else _BAD

    def billing(self, value: object) -> BillingConfig:
        table = self.table("billing", value)
        self.unknown_keys("billing", table, ("path", "currency", "amount_places"))
        defaults = BillingConfig()
        path = None
        if "path" in table:
            path = self.file("billing.path", table["path"])
            if path is not None and path.is_dir():
                self.problem(
                    "billing.path", f"{path} is a directory; give the database file's path"
                )
        currency = defaults.currency
        if "currency" in table:
            text = self.string("billing.currency", table["currency"])
            if text is not None and not _CURRENCY.fullmatch(text):
                self.problem(
                    "billing.currency", f"expected an ISO 4217 code like 'USD', got {_show(text)}"
                )
            elif text is not None:
                currency = text
        places = self.integer(
            "billing.amount_places",
            table.get("amount_places", _MISSING),
            defaults.amount_places,
            0,
            8,
        )
        return BillingConfig(path, currency, places)

    def decimal_text(self, key: str, value: object, *, positive: bool) -> Decimal | None:
        """A decimal written as a string (exact), finite and >= 0 (> 0 if ``positive``)."""
        expected = 'expected a decimal string like "0.05"'
        if isinstance(value, float):
            self.problem(key, f"{expected} (a TOML float is inexact), {_got(value)}")
            return None
        if not isinstance(value, str):
            self.problem(key, f"{expected}, {_got(value)}")
            return None
        if not _DECIMAL.fullmatch(value):
            self.problem(
                key, f"{expected} (digits, optionally a '.' and more digits), got {_show(value)}"
            )
            return None
        number = Decimal(value)
        if positive and number == 0:
            self.problem(key, f"must be greater than 0, got {_show(value)}")
            return None
        return number

    def effective_date(self, key: str, value: object) -> date | None:
        expected = "expected a date like 2026-11-01 (00:00 UTC)"
        if isinstance(value, datetime):
            self.problem(
                key, f"{expected}, without a time: prices change at 00:00 UTC, {_got(value)}"
            )
            return None
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                    return date.fromisoformat(value)
            except ValueError:
                pass
            self.problem(key, f"{expected}, got {_show(value)}")
            return None
        self.problem(key, f"{expected}, {_got(value)}")
        return None

    def price_match(self, key: str, value: object, meter: Meter | None) -> tuple[str, str] | _Bad:
        example = '{ size = "performance-l" }'
        if not isinstance(value, dict) or len(value) != 1:
            what = _got(value) if not isinstance(value, dict) else f"{len(value)} keys"
            self.problem(key, f"expected one dimension and its value, like {example}, got {what}")
            return _BAD
        [(name, item)] = value.items()
        if meter is not None and name not in meter.dimensions:
            dims = ", ".join(meter.dimensions) or "none"
            hint = _suggest(name, meter.dimensions)
            self.problem(
                _key(key, name),
                f"not a dimension of meter {meter.name!r} (dimensions: {dims}){hint}",
            )
            return _BAD
        text = self.string(_key(key, name), item)
        return _BAD if text is None else (name, text)

    def price_cap(
        self, prefix: str, table: Mapping[str, object], meter: Meter | None
    ) -> tuple[Decimal | None, Decimal | None] | _Bad:
        """(monthly_cap, daily_cap): at most one of them, only on summed meters."""
        given = [name for name in ("monthly_cap", "daily_cap") if name in table]
        if not given:
            return None, None
        if len(given) == 2:
            self.problem(f"{prefix}.daily_cap", "give either monthly_cap or daily_cap, not both")
            return _BAD
        [name] = given
        if meter is not None and meter.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            self.problem(
                f"{prefix}.{name}",
                f"caps apply to summed quantities; meter {meter.name!r} is"
                f" {meter.aggregation.value}",
            )
            return _BAD
        cap = self.decimal_text(f"{prefix}.{name}", table[name], positive=True)
        if cap is None:
            return _BAD
        return (cap, None) if name == "monthly_cap" else (None, cap)

    def price_meter(
        self,
        prefix: str,
        table: Mapping[str, object],
        meters: Mapping[str, Meter],
        declared: set[str] | None,
    ) -> Meter | None:
        name = self.required_string(prefix, table, "meter")
        if name is None or name in meters:
            return None if name is None else meters[name]
        if declared is None or name not in declared:  # a declared but invalid meter: said already
            hint = _suggest(name, sorted(meters))
            self.problem(f"{prefix}.meter", f"{name!r} is not a configured meter{hint}")
        return None

    def prices(
        self, value: object, meters: Mapping[str, Meter], declared: set[str] | None
    ) -> tuple[PriceRule, ...]:
        rules: list[PriceRule] = []
        seen: dict[tuple[str, tuple[str, str] | None, date], str] = {}
        match_dimension: dict[str, tuple[str, str]] = {}  # meter -> (dimension, prefix)
        for index, (prefix, table) in enumerate(self.array_of_tables("prices", value)):
            self.unknown_keys(prefix, table, _PRICE_KEYS)
            meter = self.price_meter(prefix, table, meters, declared)
            price = None
            if "unit_price" not in table:
                self.problem(f"{prefix}.unit_price", 'missing (the price of one unit, like "0.05")')
            else:
                price = self.decimal_text(
                    f"{prefix}.unit_price", table["unit_price"], positive=False
                )
            match: tuple[str, str] | _Bad | None = None
            if "match" in table:
                match = self.price_match(f"{prefix}.match", table["match"], meter)
                if meter is not None and not isinstance(match, _Bad):
                    other = match_dimension.setdefault(meter.name, (match[0], prefix))
                    if other[0] != match[0]:
                        self.problem(
                            f"{prefix}.match",
                            f"{other[1]} matches meter {meter.name!r} on {other[0]!r}; the matches"
                            " of one meter must use one dimension (or a line could match two)",
                        )
                        match = _BAD
            when = None
            if "effective_from" not in table:
                self.problem(
                    f"{prefix}.effective_from",
                    "missing (the first day the price applies, like 2026-11-01)",
                )
            else:
                when = self.effective_date(f"{prefix}.effective_from", table["effective_from"])
            rounding = self.quantity_rounding(prefix, table)
            cap = self.price_cap(prefix, table, meter)
            if meter is None or price is None or when is None or isinstance(match, _Bad):
                continue
            same = seen.setdefault((meter.name, match, when), prefix)
            if same != prefix:
                which = "" if match is None else f" where {match[0]} = {match[1]!r}"
                self.problem(
                    f"{prefix}.effective_from",
                    f"{same} already prices {meter.name!r}{which} from {when}",
                )
            elif not isinstance(rounding, _Bad) and not isinstance(cap, _Bad):
                rules.append(PriceRule(meter.name, price, when, match, rounding, *cap, index))
        return tuple(rules)

    def quantity_rounding(
        self, prefix: str, table: Mapping[str, object]
    ) -> QuantityRounding | _Bad | None:
        if "round_places" not in table:
            if "rounding" in table:
                self.problem(f"{prefix}.rounding", "needs round_places (0 rounds to whole units)")
                return _BAD
            return None
        places_value = table["round_places"]
        if isinstance(places_value, bool) or not isinstance(places_value, int):
            self.problem(
                f"{prefix}.round_places",
                f"expected an integer number of decimal places, {_got(places_value)}",
            )
            return _BAD
        if not 0 <= places_value <= 18:
            self.problem(f"{prefix}.round_places", f"must be between 0 and 18, got {places_value}")
            return _BAD
        mode = RoundingMode.CEILING
        if "rounding" in table:
            value = table["rounding"]
            if not isinstance(value, str) or value not in _ROUNDING_BY_NAME:
                self.problem(
                    f"{prefix}.rounding", f"expected one of {_ROUNDING_MODES}, {_got(value)}"
                )
                return _BAD
            mode = _ROUNDING_BY_NAME[value]
        return QuantityRounding(places_value, mode)

    # -- the whole ---------------------------------------------------------------------------

    def config(self, raw: Mapping[str, object]) -> Config:
        self.unknown_keys(
            "",
            raw,
            (
                "late_window",
                "dedupe_window",
                "ingest",
                "api",
                "store",
                "accounts",
                "producers",
                "meters",
                "billing",
                "prices",
            ),
        )
        late_ms, dedupe_ms = self.windows(raw)
        ingest, ingest_ok = self.ingest(raw.get("ingest", _MISSING))
        api, api_ok, admin = self.api(raw.get("api", _MISSING))
        if ingest_ok and api_ok and _addresses_overlap(ingest.listen, api.listen):
            self.problem(
                "api.listen",
                f"{api.listen} overlaps ingest.listen ({ingest.listen}); use another port",
            )
        store = self.store(raw.get("store", _MISSING))
        accounts = self.accounts(raw.get("accounts", _MISSING))
        meters, declared = self.meters(raw.get("meters", _MISSING))
        producers = self.producers(raw.get("producers", _MISSING), declared, admin)
        billing = self.billing(raw.get("billing", _MISSING))
        prices = self.prices(raw.get("prices", _MISSING), {m.name: m for m in meters}, declared)
        if raw.get("producers", []) == []:
            self.warnings.append("producers: none configured; every producer will be refused")
        if raw.get("meters", []) == []:
            self.warnings.append("meters: none configured; every event will be rejected")
        return Config(
            path=self.path,
            ingest=ingest,
            api=api,
            store=store,
            accounts=accounts,
            late_window_ms=late_ms,
            dedupe_window_ms=dedupe_ms,
            producers=producers,
            meters=meters,
            billing=billing,
            prices=prices,
            warnings=tuple(self.warnings),
        )
