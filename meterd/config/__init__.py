"""Loading and checking ``config.toml`` (protocol.md §1); the reference is docs/config.md.

:func:`load` reads the file with :mod:`tomllib` and either returns a :class:`Config` or
raises one :class:`ConfigError` that lists every problem found, one per line, each naming
its key (``meters[2].aggregation``; array indices count from 0) and what is wrong with it.
Unknown keys are problems too (with the close key suggested), so a typo never passes
silently.

Each key is declared once, in ``_model.py`` (billing's ``[billing]`` and ``[[prices]]`` in
``meterd/billing/_config.py``, the ``[[meters]]`` entry in ``meterd/model.py``): its type,
default, unit and meaning. :mod:`meterd.schema` checks the keys from those declarations
(with msgspec, chosen over pydantic for start-up cost: see its docstring); ``_load.py``
adds the rules that span keys and tables.

Durations take one form everywhere: ``"35d"``, ``"12h"``, ``"90m"``, ``"30s"``,
``"500ms"`` or a number of seconds, kept as :class:`~meterd.schema.Duration` (integer
milliseconds; ``.seconds`` for Trio). Old names (``commit_interval_ms``) still work, with
a warning naming the new key.

Secrets (``api.admin_token`` and the producers' tokens, given in the file or through
``*_env`` environment variables) never appear in an error message or in a ``repr``.
"""

from meterd.schema import Duration, format_duration

from ._load import ConfigError, load
from ._model import (
    DEFAULT_BILLING_FILE,
    DEFAULT_WINDOW_MS,
    AccountsConfig,
    ApiConfig,
    AutoOwners,
    ClusterConfig,
    Config,
    IngestConfig,
    PartitionsConfig,
    Producer,
    StoreConfig,
    account_token,
)
from ._net import Listen, Tls

__all__ = [
    "DEFAULT_BILLING_FILE",
    "DEFAULT_WINDOW_MS",
    "AccountsConfig",
    "ApiConfig",
    "AutoOwners",
    "Config",
    "ConfigError",
    "Duration",
    "IngestConfig",
    "ClusterConfig",
    "PartitionsConfig",
    "Listen",
    "Producer",
    "StoreConfig",
    "Tls",
    "account_token",
    "format_duration",
    "load",
]
