"""``meterd.config``: loading and checking config.toml (protocol.md §1)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.billing import QuantityRounding, RoundingMode
from meterd.config import Config, ConfigError, Duration, Listen, Producer, load
from meterd.model import DAY_MS, HOUR_MS, MINUTE_MS, Aggregation, Meter

ROOT = Path(__file__).resolve().parents[2]
S30 = Duration(30_000)


def ms(milliseconds: int) -> Duration:
    return Duration(milliseconds)


ADMIN = "test-admin-token-0001"
ROUTER = "test-router-token-0002"
PLATFORM = "test-platform-token-0003"

INGEST = 'listen = "127.0.0.1:8700"'
API = f'listen = "127.0.0.1:8701"\nadmin_token = "{ADMIN}"'
STORE = 'path = "var/test.sqlite3"'
PRODUCERS = f"""
[[producers]]
name = "router"
token = "{ROUTER}"
meters = ["router.requests"]

[[producers]]
name = "platform"
token = "{PLATFORM}"
"""
METERS = """
[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["size", "app"]

[[meters]]
name = "router.requests"
aggregation = "count"

[[meters]]
name = "api.active_users"
aggregation = "unique_count"
unique_property = "user"
"""


def text(
    *,
    top: str = "",
    ingest: str = INGEST,
    api: str = API,
    store: str = STORE,
    accounts: str = "",
    producers: str = PRODUCERS,
    meters: str = METERS,
) -> str:
    """A config file: the valid defaults above, with any part replaced."""
    return (
        f"{top}\n[ingest]\n{ingest}\n[api]\n{api}\n[store]\n{store}\n"
        f"[accounts]\n{accounts}\n{producers}\n{meters}\n"
    )


def load_text(tmp_path: Path, content: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(content, encoding="utf-8")
    return load(path)


def error_of(tmp_path: Path, content: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, content)
    return caught.value


def problem_for(tmp_path: Path, content: str, key: str) -> str:
    """The one problem about ``key`` (the message line that starts with it)."""
    error = error_of(tmp_path, content)
    matching = [p for p in error.problems if p.startswith(f"{key}: ")]
    assert matching, f"no problem about {key!r} in:\n{error}"
    assert len(matching) == 1, f"{key!r} reported more than once:\n{error}"
    assert matching[0] in str(error)
    return matching[0]


# --- the shipped config and a valid config -------------------------------------------------------


def test_shipped_config_loads() -> None:
    config = load(ROOT / "config.toml")
    assert config.ingest_listen == Listen("127.0.0.1", 8700)
    assert config.api_listen == Listen("127.0.0.1", 8701)
    assert config.ingest_listen.is_loopback
    assert config.store_path == ROOT / "var" / "meterd.sqlite3"
    assert config.late_window.ms == config.dedupe_window.ms == 35 * DAY_MS
    assert [p.name for p in config.producers] == ["router", "platform"]
    assert config.producers[0].meters == frozenset({"router.requests"})
    assert config.producers[1].meters is None
    assert set(config.meters_by_name) == {
        "dyno.seconds",
        "addon.hours",
        "router.requests",
        "postgres.storage_bytes",
        "api.active_users",
    }
    active = config.meters_by_name["api.active_users"]
    assert active == Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user", "users")
    assert config.warnings == ()
    assert config.ingest.tls is None
    assert config.api.tls is None


def test_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[api]\nadmin_token = "{ADMIN}"\n' + PRODUCERS + METERS)
    assert config.ingest_listen == Listen("127.0.0.1", 8700)
    assert config.api_listen == Listen("127.0.0.1", 8701)
    assert config.store_path == tmp_path / "var" / "meterd.sqlite3"
    assert (config.ingest.max_frame_bytes, config.ingest.max_batch, config.ingest.window) == (
        1_048_576,
        1000,
        64,
    )
    assert config.ingest.max_in_flight_events == 20_000
    assert config.ingest.max_ack_bytes == 64 * 1024 * 1024
    assert config.ingest.max_ack_bytes_per_connection == 8 * 1024 * 1024
    assert config.ingest.max_connections_per_producer == 32
    assert (config.ingest.keepalive_interval, config.ingest.keepalive_timeout) == (S30, S30)
    assert (config.store.checkpoint_interval, config.store.commit_interval) == (S30, ms(2))
    assert config.store.index_cycle.seconds == 5.0
    assert config.store.wal_checkpoint_interval == ms(100)
    accounts = config.accounts
    assert (accounts.idle_timeout.seconds, accounts.mailbox_size) == (300.0, 1024)
    assert (accounts.max_restarts, accounts.max_seconds.seconds) == (50, 10.0)
    assert config.late_window.ms == config.dedupe_window.ms == 35 * DAY_MS


def test_every_setting_is_read(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(
            top='late_window = "2d"\ndedupe_window = "3d"',
            ingest=INGEST
            + "\nmax_frame_bytes = 65536\nmax_batch = 10\nwindow = 4\nmax_in_flight_events = 77"
            + '\nkeepalive_interval = "2m"\nkeepalive_timeout = 7.5'
            + "\nmax_ack_bytes = 1000000\nmax_ack_bytes_per_connection = 100000"
            + "\nmax_connections_per_producer = 3",
            store=STORE
            + '\ncheckpoint_interval = "2m"\ncommit_interval = 0\nindex_cycle = "250ms"'
            + '\nwal_checkpoint_interval = "0ms"',
            accounts="idle_timeout = 0.5\nmailbox_size = 8\nmax_restarts = 0\nmax_seconds = 30",
        ),
    )
    assert (config.ingest.max_frame_bytes, config.ingest.max_batch, config.ingest.window) == (
        65536,
        10,
        4,
    )
    assert config.ingest.max_in_flight_events == 77
    assert config.ingest.max_ack_bytes == 1_000_000
    assert config.ingest.max_ack_bytes_per_connection == 100_000
    assert config.ingest.max_connections_per_producer == 3
    ingest = config.ingest
    assert (ingest.keepalive_interval.seconds, ingest.keepalive_timeout.seconds) == (120.0, 7.5)
    assert (config.store.checkpoint_interval.seconds, config.store.commit_interval) == (120, ms(0))
    assert config.store.index_cycle.seconds == 0.25
    assert config.store.wal_checkpoint_interval == ms(0)
    accounts = config.accounts
    assert (accounts.idle_timeout.seconds, accounts.mailbox_size) == (0.5, 8)
    assert (accounts.max_restarts, accounts.max_seconds.seconds) == (0, 30.0)
    assert (config.late_window.ms, config.dedupe_window.ms) == (2 * DAY_MS, 3 * DAY_MS)
    assert config.warnings == ()


def test_store_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "config.toml").write_text(text(store='path = "data/m.sqlite3"'))
    monkeypatch.chdir(tmp_path)
    config = load(Path("etc/config.toml"))
    assert config.path == Path("etc/config.toml")
    assert config.store_path == sub / "data" / "m.sqlite3"
    assert config.store_path.is_absolute()


def test_absolute_store_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "m.sqlite3"
    config = load_text(tmp_path, text(store=f'path = "{target}"'))
    assert config.store_path == target


def test_store_path_may_not_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    assert "directory" in problem_for(tmp_path, text(store='path = "var"'), "store.path")


# --- files that are not config files -------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "absent.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[ingest\nlisten = "127.0.0.1:8700"\n')
    assert "not valid TOML" in str(error)
    assert "line 1" in str(error)


# --- unknown keys and wrong types ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        ({"top": "late_windw = 3"}, "late_windw"),
        ({"ingest": INGEST + "\nlisen = 1"}, "ingest.lisen"),
        ({"api": API + '\nadmin = "x"'}, "api.admin"),
        ({"store": STORE + "\nwal = true"}, "store.wal"),
        ({"accounts": "idle = 3"}, "accounts.idle"),
        ({"producers": PRODUCERS + "meter = []"}, "producers[1].meter"),
        ({"meters": METERS + "dimension = []"}, "meters[2].dimension"),
        ({"top": '"strange key" = 1'}, '"strange key"'),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, parts: dict[str, str], key: str) -> None:
    assert "unknown key" in problem_for(tmp_path, text(**parts), key)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    problem = problem_for(tmp_path, text(ingest=INGEST + "\nmax_bach = 5"), "ingest.max_bach")
    assert "did you mean 'max_batch'" in problem


@pytest.mark.parametrize(
    ("parts", "key", "expected"),
    [
        ({"ingest": INGEST + '\nmax_batch = "1000"'}, "ingest.max_batch", "expected an integer"),
        ({"ingest": INGEST + "\nwindow = 6.4"}, "ingest.window", "expected an integer"),
        ({"ingest": INGEST + "\nmax_frame_bytes = true"}, "ingest.max_frame_bytes", "integer"),
        (
            {"ingest": INGEST + '\nmax_in_flight_events = "many"'},
            "ingest.max_in_flight_events",
            "expected an integer",
        ),
        ({"store": "path = 5"}, "store.path", "expected a string"),
        ({"store": STORE + "\ncommit_interval_ms = 1.5"}, "store.commit_interval_ms", "integer"),
        (
            {"store": STORE + "\ncheckpoint_interval = true"},
            "store.checkpoint_interval",
            "duration",
        ),
        ({"accounts": "mailbox_size = [1]"}, "accounts.mailbox_size", "expected an integer"),
        ({"accounts": "max_restarts = false"}, "accounts.max_restarts", "expected an integer"),
        ({"accounts": 'idle_timeout = "5 minutes"'}, "accounts.idle_timeout", "duration"),
        ({"api": 'listen = 8701\nadmin_token = "x"'}, "api.listen", "HOST:PORT"),
        ({"api": "admin_token = 12345"}, "api.admin_token", "expected a string"),
        ({"meters": '[[meters]]\nname = 7\naggregation = "sum"'}, "meters[0].name", "string"),
        ({"meters": '[[meters]]\nname = "a"\naggregation = 1'}, "meters[0].aggregation", "string"),
        (
            {"meters": '[[meters]]\nname = "a"\naggregation = "sum"\ndimensions = "app"'},
            "meters[0].dimensions",
            "expected an array",
        ),
        (
            {"top": 'producers = "router"', "producers": ""},
            "producers",
            "expected an array of tables",
        ),
        ({"top": "meters = [1, 2]", "meters": ""}, "meters[0]", "expected a table"),
        (
            {"producers": '[[producers]]\nname = "p"\ntoken = "t"\nmeters = "dyno.seconds"'},
            "producers[0].meters",
            "expected an array",
        ),
    ],
)
def test_wrong_types_are_named(
    tmp_path: Path, parts: dict[str, str], key: str, expected: str
) -> None:
    assert expected in problem_for(tmp_path, text(**parts), key)


def test_a_section_that_is_not_a_table(tmp_path: Path) -> None:
    content = f'ingest = "127.0.0.1:8700"\n[api]\nadmin_token = "{ADMIN}"\n' + PRODUCERS + METERS
    assert "expected a table" in problem_for(tmp_path, content, "ingest")


def test_producers_as_a_single_table(tmp_path: Path) -> None:
    content = text(producers=f'[producers]\nname = "router"\ntoken = "{ROUTER}"')
    problem = problem_for(tmp_path, content, "producers")
    assert "[[producers]]" in problem


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        ({"ingest": INGEST + "\nmax_frame_bytes = 10"}, "ingest.max_frame_bytes"),
        ({"ingest": INGEST + "\nmax_batch = 0"}, "ingest.max_batch"),
        ({"ingest": INGEST + "\nwindow = -1"}, "ingest.window"),
        ({"ingest": INGEST + "\nmax_in_flight_events = 0"}, "ingest.max_in_flight_events"),
        ({"ingest": INGEST + "\nmax_ack_bytes = 1000"}, "ingest.max_ack_bytes"),
        (
            {"ingest": INGEST + "\nmax_ack_bytes_per_connection = 0"},
            "ingest.max_ack_bytes_per_connection",
        ),
        (
            {"ingest": INGEST + "\nmax_connections_per_producer = 0"},
            "ingest.max_connections_per_producer",
        ),
        ({"ingest": INGEST + "\nkeepalive_timeout = 0"}, "ingest.keepalive_timeout"),
        ({"store": STORE + "\ncommit_interval_ms = 5000"}, "store.commit_interval_ms"),
        ({"store": STORE + "\nindex_cycle = 0"}, "store.index_cycle"),
        ({"store": STORE + '\nindex_cycle = "2h"'}, "store.index_cycle"),
        (
            {"store": STORE + "\nwal_checkpoint_interval_ms = -1"},
            "store.wal_checkpoint_interval_ms",
        ),
        ({"accounts": "mailbox_size = 0"}, "accounts.mailbox_size"),
        ({"accounts": "max_restarts = -1"}, "accounts.max_restarts"),
        ({"accounts": "max_seconds = 0"}, "accounts.max_seconds"),
        ({"accounts": "idle_timeout = -5"}, "accounts.idle_timeout"),
        ({"store": STORE + "\ncheckpoint_interval = 0"}, "store.checkpoint_interval"),
    ],
)
def test_out_of_range_numbers_are_named(tmp_path: Path, parts: dict[str, str], key: str) -> None:
    problem_for(tmp_path, text(**parts), key)


# --- listen addresses and TLS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port", "shown"),
    [
        ("127.0.0.1:8700", "127.0.0.1", 8700, "127.0.0.1:8700"),
        ("[::1]:8700", "::1", 8700, "[::1]:8700"),
        ("localhost:1", "localhost", 1, "localhost:1"),
        ("0.0.0.0:65535", "0.0.0.0", 65535, "0.0.0.0:65535"),
        ("[::]:8700", "::", 8700, "[::]:8700"),
        ("meter-1.internal:8700", "meter-1.internal", 8700, "meter-1.internal:8700"),
    ],
)
def test_listen_parses(tmp_path: Path, value: str, host: str, port: int, shown: str) -> None:
    config = load_text(tmp_path, text(ingest=f'listen = "{value}"'))
    assert config.ingest_listen == Listen(host, port)
    assert str(config.ingest_listen) == shown


@pytest.mark.parametrize(
    "value",
    [
        "nowhere",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "127.0.0.1:-1",
        ":8700",
        "::1:8700",
        "[::1]8700",
        "[::1]:",
        "[not-ipv6]:8700",
        "300.1.1.1:8700",
        "bad host:8700",
        "",
    ],
)
def test_bad_listen_is_named(tmp_path: Path, value: str) -> None:
    problem = problem_for(tmp_path, text(ingest=f'listen = "{value}"'), "ingest.listen")
    assert problem.startswith("ingest.listen: ")


def test_unbracketed_ipv6_says_to_use_brackets(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path, text(api=f'listen = "::1:8701"\nadmin_token = "{ADMIN}"'), "api.listen"
    )
    assert "[::1]:8701" in problem


def test_ingest_and_api_cannot_share_an_address(tmp_path: Path) -> None:
    content = text(api=f'listen = "127.0.0.1:8700"\nadmin_token = "{ADMIN}"')
    assert "ingest.listen" in problem_for(tmp_path, content, "api.listen")


def test_wildcard_overlaps_the_same_port(tmp_path: Path) -> None:
    content = text(
        ingest='listen = "0.0.0.0:8700"',
        api=f'listen = "127.0.0.1:8700"\nadmin_token = "{ADMIN}"',
    )
    problem_for(tmp_path, content, "api.listen")


def test_non_loopback_without_tls_warns(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(
            ingest='listen = "0.0.0.0:8700"',
            api=f'listen = "[::]:8701"\nadmin_token = "{ADMIN}"',
        ),
    )
    assert len(config.warnings) == 2
    assert config.warnings[0].startswith("ingest.listen: ")
    assert config.warnings[1].startswith("api.listen: ")
    assert all("TLS" in warning for warning in config.warnings)


def test_loopback_does_not_warn(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(
            ingest='listen = "localhost:8700"',
            api=f'listen = "[::1]:8701"\nadmin_token = "{ADMIN}"',
        ),
    )
    assert config.warnings == ()


def test_tls_cert_without_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    content = text(ingest=INGEST + '\ntls_cert = "cert.pem"')
    assert "ingest.tls_cert" in problem_for(tmp_path, content, "ingest.tls_key")


def test_tls_key_without_cert(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("x")
    content = text(api=API + '\ntls_key = "key.pem"')
    assert "api.tls_key" in problem_for(tmp_path, content, "api.tls_cert")


def test_tls_files_must_exist(tmp_path: Path) -> None:
    content = text(ingest=INGEST + '\ntls_cert = "nope/cert.pem"\ntls_key = "nope/key.pem"')
    error = error_of(tmp_path, content)
    assert f"ingest.tls_cert: no such file: {tmp_path / 'nope' / 'cert.pem'}" in error.problems
    assert f"ingest.tls_key: no such file: {tmp_path / 'nope' / 'key.pem'}" in error.problems


@dataclass
class Pems:
    cert: Path
    key: Path
    other_key: Path
    encrypted_key: Path


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Pems:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("pems")
    ec = ["-pkeyopt", "ec_paramgen_curve:prime256v1"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        *ec,
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(where / "key.pem"),
        "-out",
        str(where / "cert.pem"),
    )
    run("genpkey", "-algorithm", "EC", *ec, "-out", str(where / "other.pem"))
    run(
        "genpkey",
        "-algorithm",
        "EC",
        *ec,
        "-aes256",
        "-pass",
        "pass:passphrase",
        "-out",
        str(where / "encrypted.pem"),
    )
    return Pems(where / "cert.pem", where / "key.pem", where / "other.pem", where / "encrypted.pem")


def test_tls_loads_relative_to_the_config_file(tmp_path: Path, pems: Pems) -> None:
    shutil.copy(pems.cert, tmp_path / "cert.pem")
    shutil.copy(pems.key, tmp_path / "key.pem")
    tls = '\ntls_cert = "cert.pem"\ntls_key = "key.pem"'
    config = load_text(
        tmp_path,
        text(
            ingest='listen = "0.0.0.0:8700"' + tls,
            api=f'listen = "0.0.0.0:8701"\nadmin_token = "{ADMIN}"' + tls,
        ),
    )
    assert config.ingest.tls is not None
    assert config.ingest.tls.cert == tmp_path / "cert.pem"
    assert config.ingest.tls.key == tmp_path / "key.pem"
    assert config.api.tls == config.ingest.tls
    assert config.warnings == ()  # non-loopback, but TLS is on
    config.ingest.tls.server_context()


def test_tls_key_that_does_not_match(tmp_path: Path, pems: Pems) -> None:
    content = text(ingest=INGEST + f'\ntls_cert = "{pems.cert}"\ntls_key = "{pems.other_key}"')
    assert "does not match" in problem_for(tmp_path, content, "ingest.tls_key")


def test_tls_encrypted_key(tmp_path: Path, pems: Pems) -> None:
    content = text(api=API + f'\ntls_cert = "{pems.cert}"\ntls_key = "{pems.encrypted_key}"')
    assert "encrypted" in problem_for(tmp_path, content, "api.tls_key")


def test_tls_cert_that_is_not_a_certificate(tmp_path: Path, pems: Pems) -> None:
    content = text(api=API + f'\ntls_cert = "{pems.key}"\ntls_key = "{pems.key}"')
    assert "not a PEM certificate" in problem_for(tmp_path, content, "api.tls_cert")


def test_tls_key_that_is_not_a_key(tmp_path: Path, pems: Pems) -> None:
    content = text(api=API + f'\ntls_cert = "{pems.cert}"\ntls_key = "{pems.cert}"')
    assert "not a PEM private key" in problem_for(tmp_path, content, "api.tls_key")


# --- windows -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.25", 0.25), ('"2m"', 120.0), ('"250ms"', 0.25), ("0.0001", 0.001)],
)
def test_seconds_settings_parse(tmp_path: Path, value: str, seconds: float) -> None:
    config = load_text(tmp_path, text(accounts=f"idle_timeout = {value}"))
    assert config.accounts.idle_timeout.seconds == seconds


@pytest.mark.parametrize("value", ["0.0", "-0.5", "inf", "nan", "1e308", '"soon"'])
def test_bad_seconds_settings_are_named(tmp_path: Path, value: str) -> None:
    problem_for(tmp_path, text(accounts=f"max_seconds = {value}"), "accounts.max_seconds")


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ('"35d"', 35 * DAY_MS),
        ('"12h"', 12 * HOUR_MS),
        ('"90m"', 90 * MINUTE_MS),
        ('"30s"', 30_000),
        ('"1500ms"', 1500),
        ("86400", DAY_MS),
        ("1.5", 1500),  # one convention for every duration: fractions of seconds too
    ],
)
def test_durations_parse(tmp_path: Path, value: str, ms: int) -> None:
    config = load_text(tmp_path, text(top=f"late_window = {value}\ndedupe_window = {value}"))
    assert config.late_window.ms == ms
    assert config.dedupe_window.ms == ms


@pytest.mark.parametrize(
    "value", ['"35 days"', '"1.5h"', '"-1d"', '"d"', '"35D"', "0", "-5", '"0s"', "-1.5", "true"]
)
def test_bad_durations_are_named(tmp_path: Path, value: str) -> None:
    problem_for(tmp_path, text(top=f"late_window = {value}"), "late_window")


def test_dedupe_window_at_least_late_window(tmp_path: Path) -> None:
    content = text(top='late_window = "35d"\ndedupe_window = "12h"')
    problem = problem_for(tmp_path, content, "dedupe_window")
    assert "late_window" in problem
    assert "12h" in problem
    assert "35d" in problem


def test_dedupe_window_shorter_than_the_default_late_window(tmp_path: Path) -> None:
    problem_for(tmp_path, text(top='dedupe_window = "1d"'), "dedupe_window")


def test_windows_may_be_equal_or_dedupe_longer(tmp_path: Path) -> None:
    config = load_text(tmp_path, text(top='late_window = "1h"\ndedupe_window = 7200'))
    assert (config.late_window.ms, config.dedupe_window.ms) == (HOUR_MS, 2 * HOUR_MS)


# --- meters --------------------------------------------------------------------------------------


def meter(name: str = "m", aggregation: str = "sum", extra: str = "") -> str:
    return f'[[meters]]\nname = "{name}"\naggregation = "{aggregation}"\n{extra}\n'


def with_meters(*meters: str) -> str:
    return text(producers="", meters="".join(meters))


@pytest.mark.parametrize("name", ["Dyno", "-dyno", ".x", "", "a" * 65, "dyno seconds", "dyno/s"])
def test_bad_meter_name(tmp_path: Path, name: str) -> None:
    problem_for(tmp_path, with_meters(meter("ok"), meter(name)), "meters[1].name")


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "dyno.seconds", "a-b_c.d"])
def test_good_meter_name(tmp_path: Path, name: str) -> None:
    assert name in load_text(tmp_path, with_meters(meter(name))).meters_by_name


def test_duplicate_meter(tmp_path: Path) -> None:
    content = with_meters(meter("a"), meter("b"), meter("a", "count"))
    assert "meters[0]" in problem_for(tmp_path, content, "meters[2].name")


def test_unknown_aggregation(tmp_path: Path) -> None:
    content = with_meters(meter("a"), meter("b"), meter("c", "avg"))
    problem = problem_for(tmp_path, content, "meters[2].aggregation")
    assert problem == (
        "meters[2].aggregation: 'avg' is not one of sum, count, max, min, latest, unique_count"
    )


def test_missing_name_and_aggregation(tmp_path: Path) -> None:
    content = with_meters('[[meters]]\ndimensions = ["x"]\n')
    error = error_of(tmp_path, content)
    assert any(p.startswith("meters[0].name: missing") for p in error.problems)
    assert any(p.startswith("meters[0].aggregation: missing") for p in error.problems)


@pytest.mark.parametrize("aggregation", [a.value for a in Aggregation])
def test_every_aggregation(tmp_path: Path, aggregation: str) -> None:
    extra = 'unique_property = "user"' if aggregation == "unique_count" else ""
    config = load_text(tmp_path, with_meters(meter("m", aggregation, extra)))
    assert config.meters_by_name["m"].aggregation is Aggregation(aggregation)


def test_unique_count_needs_unique_property(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path, with_meters(meter("u", "unique_count")), "meters[0].unique_property"
    )
    assert "missing" in problem


@pytest.mark.parametrize("aggregation", ["sum", "count", "max", "min", "latest"])
def test_unique_property_only_with_unique_count(tmp_path: Path, aggregation: str) -> None:
    content = with_meters(meter("m", aggregation, 'unique_property = "user"'))
    assert "unique_count" in problem_for(tmp_path, content, "meters[0].unique_property")


def test_dimensions(tmp_path: Path) -> None:
    config = load_text(tmp_path, with_meters(meter("m", extra='dimensions = ["b", "a"]')))
    assert config.meters[0].dimensions == ("b", "a")


def test_duplicate_dimension(tmp_path: Path) -> None:
    content = with_meters(meter("m", extra='dimensions = ["app", "size", "app"]'))
    assert "'app'" in problem_for(tmp_path, content, "meters[0].dimensions")


def test_too_many_dimensions(tmp_path: Path) -> None:
    names = ", ".join(f'"d{i}"' for i in range(17))
    content = with_meters(meter("m", extra=f"dimensions = [{names}]"))
    assert "16" in problem_for(tmp_path, content, "meters[0].dimensions")
    sixteen = ", ".join(f'"d{i}"' for i in range(16))
    load_text(tmp_path, with_meters(meter("m", extra=f"dimensions = [{sixteen}]")))


def test_dimension_that_is_not_a_string(tmp_path: Path) -> None:
    content = with_meters(meter("m", extra='dimensions = ["app", 3]'))
    assert "expected a string" in problem_for(tmp_path, content, "meters[0].dimensions[1]")


# --- producers and tokens ------------------------------------------------------------------------


def producer(name: str = "p", secret: str = 'token = "tok-p"', extra: str = "") -> str:
    return f'[[producers]]\nname = "{name}"\n{secret}\n{extra}\n'


def with_producers(*producers: str) -> str:
    return text(producers="".join(producers))


def test_duplicate_producer_name(tmp_path: Path) -> None:
    content = with_producers(producer("a", 'token = "t1"'), producer("a", 'token = "t2"'))
    assert "producers[0]" in problem_for(tmp_path, content, "producers[1].name")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65])
def test_bad_producer_name(tmp_path: Path, name: str) -> None:
    problem_for(tmp_path, with_producers(producer(name)), "producers[0].name")


def test_missing_producer_name(tmp_path: Path) -> None:
    content = with_producers('[[producers]]\ntoken = "t1"\n')
    assert "missing" in problem_for(tmp_path, content, "producers[0].name")


def test_missing_token(tmp_path: Path) -> None:
    content = with_producers(producer("a", ""))
    problem = problem_for(tmp_path, content, "producers[0].token")
    assert "token_env" in problem


def test_token_and_token_env_together(tmp_path: Path) -> None:
    content = with_producers(producer("a", 'token = "t1"\ntoken_env = "T1"'))
    assert "not both" in problem_for(tmp_path, content, "producers[0].token")


def test_duplicate_token_is_named_without_its_value(tmp_path: Path) -> None:
    secret = "shared-secret-value-xyz"
    content = with_producers(
        producer("a", f'token = "{secret}"'), producer("b", f'token = "{secret}"')
    )
    problem = problem_for(tmp_path, content, "producers[1].token")
    assert "producers[0]" in problem
    assert secret not in str(error_of(tmp_path, content))


def test_producer_token_may_not_be_the_admin_token(tmp_path: Path) -> None:
    content = with_producers(producer("a", f'token = "{ADMIN}"'))
    assert "api.admin_token" in problem_for(tmp_path, content, "producers[0].token")
    assert ADMIN not in str(error_of(tmp_path, content))


@pytest.mark.parametrize(
    ("toml_value", "secret_part"),
    [
        ('""', ""),
        ('"has space-0005"', "space-0005"),
        ('"tab\\tsecret-0006"', "secret-0006"),
        ('"naïve-0007"', "ve-0007"),
    ],
)
def test_bad_token_text(tmp_path: Path, toml_value: str, secret_part: str) -> None:
    content = with_producers(producer("a", f"token = {toml_value}"))
    problem_for(tmp_path, content, "producers[0].token")
    if secret_part:
        assert secret_part not in str(error_of(tmp_path, content))


def test_token_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERD_TEST_ROUTER_TOKEN", "from-the-environment-123")
    monkeypatch.setenv("METERD_TEST_ADMIN_TOKEN", "admin-from-the-environment-456")
    content = text(
        api='admin_token_env = "METERD_TEST_ADMIN_TOKEN"',
        producers=producer("router", 'token_env = "METERD_TEST_ROUTER_TOKEN"'),
    )
    config = load_text(tmp_path, content)
    assert config.producers[0].token == "from-the-environment-123"
    assert config.api.admin_token == "admin-from-the-environment-456"
    assert "from-the-environment-123" not in repr(config)
    assert "admin-from-the-environment-456" not in repr(config)


def test_missing_token_env_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METERD_TEST_NOT_SET", raising=False)
    content = with_producers(producer("a", 'token_env = "METERD_TEST_NOT_SET"'))
    problem = problem_for(tmp_path, content, "producers[0].token_env")
    assert "'METERD_TEST_NOT_SET' is not set" in problem


def test_empty_token_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERD_TEST_EMPTY", "")
    content = with_producers(producer("a", 'token_env = "METERD_TEST_EMPTY"'))
    assert "empty" in problem_for(tmp_path, content, "producers[0].token_env")


def test_env_token_with_a_newline_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERD_TEST_NEWLINE", "secret-with-newline-789\n")
    content = with_producers(producer("a", 'token_env = "METERD_TEST_NEWLINE"'))
    problem_for(tmp_path, content, "producers[0].token_env")
    assert "secret-with-newline-789" not in str(error_of(tmp_path, content))


def test_token_env_that_is_not_a_variable_name(tmp_path: Path) -> None:
    content = with_producers(producer("a", 'token_env = "NOT A NAME"'))
    problem_for(tmp_path, content, "producers[0].token_env")


def test_missing_admin_token(tmp_path: Path) -> None:
    problem = problem_for(tmp_path, text(api='listen = "127.0.0.1:8701"'), "api.admin_token")
    assert "admin_token_env" in problem


def test_empty_admin_token(tmp_path: Path) -> None:
    assert "empty" in problem_for(tmp_path, text(api='admin_token = ""'), "api.admin_token")


def test_missing_admin_token_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERD_TEST_NO_ADMIN", raising=False)
    content = text(api='admin_token_env = "METERD_TEST_NO_ADMIN"')
    problem = problem_for(tmp_path, content, "api.admin_token_env")
    assert "METERD_TEST_NO_ADMIN" in problem


def test_env_can_be_passed_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text(api='admin_token_env = "ADMIN"'))
    config = load(path, env={"ADMIN": "explicit-admin-token"})
    assert config.api.admin_token == "explicit-admin-token"


def test_producer_meters_must_be_configured(tmp_path: Path) -> None:
    content = with_producers(producer("a", extra='meters = ["dyno.seconds", "router.request"]'))
    problem = problem_for(tmp_path, content, "producers[0].meters")
    assert "'router.request' is not a configured meter" in problem
    assert "did you mean 'router.requests'" in problem


def test_producer_meters_empty_list(tmp_path: Path) -> None:
    content = with_producers(producer("a", extra="meters = []"))
    problem_for(tmp_path, content, "producers[0].meters")


def test_producer_meters_duplicate(tmp_path: Path) -> None:
    content = with_producers(producer("a", extra='meters = ["dyno.seconds", "dyno.seconds"]'))
    assert "more than once" in problem_for(tmp_path, content, "producers[0].meters")


def test_producer_meters_absent_means_all(tmp_path: Path) -> None:
    config = load_text(tmp_path, with_producers(producer("a")))
    assert config.producers[0].meters is None
    assert config.producers[0].may_write("dyno.seconds")


def test_producer_meters_limit(tmp_path: Path) -> None:
    config = load_text(tmp_path, with_producers(producer("a", extra='meters = ["dyno.seconds"]')))
    assert config.producers[0].meters == frozenset({"dyno.seconds"})
    assert config.producers[0].may_write("dyno.seconds")
    assert not config.producers[0].may_write("router.requests")


def test_a_meter_with_a_bad_name_is_not_reported_again_by_producers(tmp_path: Path) -> None:
    content = text(
        producers=producer("a", extra='meters = ["Bad"]'),
        meters=meter("Bad"),
    )
    error = error_of(tmp_path, content)
    assert [p.split(":")[0] for p in error.problems] == ["meters[0].name"]


def test_no_producers_or_meters_warns(tmp_path: Path) -> None:
    config = load_text(tmp_path, text(producers="", meters=""))
    assert any(w.startswith("producers: ") for w in config.warnings)
    assert any(w.startswith("meters: ") for w in config.warnings)


# --- secrets stay secret -------------------------------------------------------------------------


def test_no_token_in_repr() -> None:
    config = load(ROOT / "config.toml")
    shown = repr(config) + str(config) + repr(config.producers) + repr(config.api)
    for secret in ("dev-admin-token-change-me", "dev-router-token", "dev-platform-token"):
        assert secret not in shown
    assert "router" in repr(config.producers[0])


def test_no_token_in_any_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = ["secret-aaaa-1111", "secret-bbbb-2222", "secret c", "secret-dddd-4444"]
    monkeypatch.setenv("METERD_TEST_SECRET", secrets[3])
    content = text(
        api=f'admin_token = "{secrets[0]}"\nadmin_token_env = "METERD_TEST_SECRET"',
        producers=producer("a", f'token = "{secrets[1]}"', 'meters = ["nope"]')
        + producer("b", f'token = "{secrets[1]}"')
        + producer("c", f'token = "{secrets[2]}"')
        + producer("d", "token = 987654321987")
        + producer("a", 'token_env = "METERD_TEST_SECRET"\ntoken = "secret-eeee"'),
    )
    error = error_of(tmp_path, content)
    assert len(error.problems) >= 6
    for secret in [*secrets, "secret-eeee", "987654321987"]:
        assert secret not in str(error)
        assert secret not in repr(error)


# --- many mistakes at once -----------------------------------------------------------------------


def test_every_mistake_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERD_TEST_MISSING", raising=False)
    content = text(
        top='late_window = "35d"\ndedupe_window = "1d"\ntypo = 1',
        ingest='listen = "nowhere"',
        api='listen = "127.0.0.1:8701"',
        store=STORE + "\ncommit_interval_ms = -1",
        producers=producer("a", 'token_env = "METERD_TEST_MISSING"', 'meters = ["x", "x"]')
        + producer("a"),
        meters=meter("m", "avg") + meter("m") + meter("u", "unique_count"),
    )
    error = error_of(tmp_path, content)
    keys = [p.split(": ")[0] for p in error.problems]
    assert keys == [
        "typo",
        "dedupe_window",
        "ingest.listen",
        "api.admin_token",
        "store.commit_interval_ms",
        "meters[0].aggregation",
        "meters[1].name",
        "meters[2].unique_property",
        "producers[0].token_env",
        "producers[0].meters",
        "producers[1].name",
    ]
    assert len(set(error.problems)) == len(error.problems)
    lines = str(error).splitlines()
    assert lines[0].endswith(f"{len(error.problems)} problems:")
    assert [line.strip() for line in lines[1:]] == list(error.problems)


def test_a_single_problem_is_one_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, text(ingest='listen = "nowhere"'))
    assert len(error.problems) == 1
    assert str(error) == f"{tmp_path / 'config.toml'}: {error.problems[0]}"


# --- looking producers up by token ---------------------------------------------------------------


def test_producer_for_token() -> None:
    config = load(ROOT / "config.toml")
    router = config.producer_for_token("dev-router-token")
    platform = config.producer_for_token("dev-platform-token")
    assert isinstance(router, Producer)
    assert router.name == "router"
    assert platform is not None
    assert platform.name == "platform"
    for wrong in (
        "",
        "dev-router-toke",
        "dev-router-token ",
        "dev-admin-token-change-me",
        "ü\udc80",
    ):
        assert config.producer_for_token(wrong) is None


def test_admin_token_check() -> None:
    config = load(ROOT / "config.toml")
    assert config.api.is_admin_token("dev-admin-token-change-me")
    assert not config.api.is_admin_token("dev-router-token")
    assert not config.api.is_admin_token("")


# --- [billing] and [[prices]] ---------------------------------------------------------------------

PRICE = """
[[prices]]
meter = "dyno.seconds"
unit_price = "0.0000104"
effective_from = 2026-01-01
"""


def prices(*entries: str) -> str:
    """The test meters followed by ``[[prices]]`` entries (each the body of one table)."""
    return METERS + "".join(f"\n[[prices]]\n{entry}\n" for entry in entries)


def test_price_book_is_read(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(
            meters=prices(
                'meter = "dyno.seconds"\nunit_price = "0.01"\neffective_from = 2026-01-01\n'
                'round_places = 0\nrounding = "half_even"\ndaily_cap = "86400"',
                'meter = "dyno.seconds"\nunit_price = "0.02"\neffective_from = "2026-11-15"\n'
                'match = { size = "performance-l" }\nmonthly_cap = "100.5"',
                'meter = "api.active_users"\nunit_price = "0.5"\neffective_from = 2026-01-01',
            )
        ),
    )
    first, second, third = config.prices
    assert (first.unit_price, first.effective_from, first.match) == (
        Decimal("0.01"),
        date(2026, 1, 1),
        None,
    )
    assert first.rounding == QuantityRounding(0, RoundingMode.HALF_EVEN)
    assert (first.daily_cap, first.monthly_cap) == (Decimal(86400), None)
    assert (second.match, second.monthly_cap, second.rounding) == (
        ("size", "performance-l"),
        Decimal("100.5"),
        None,
    )
    assert second.effective_from == date(2026, 11, 15)
    assert third.meter == "api.active_users"
    assert config.billing.currency == "USD"
    assert config.billing_path == tmp_path / "var" / "billing.sqlite3"  # beside the store


def test_billing_section(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(top='[billing]\npath = "b/bill.db"\ncurrency = "EUR"\namount_places = 3\n'),
    )
    assert config.billing_path == tmp_path / "b" / "bill.db"
    assert (config.billing.currency, config.billing.amount_places) == ("EUR", 3)


def test_round_places_without_rounding_rounds_up(tmp_path: Path) -> None:
    config = load_text(tmp_path, text(meters=METERS + PRICE + "round_places = 2"))
    assert config.prices[0].rounding == QuantityRounding(2, RoundingMode.CEILING)


BASE = 'meter = "dyno.seconds"\nunit_price = "1"\neffective_from = 2026-01-01'


@pytest.mark.parametrize(
    ("entry", "key", "expected"),
    [
        ('unit_price = "1"\neffective_from = 2026-01-01', "prices[0].meter", "missing"),
        (
            'meter = "dyno.second"\nunit_price = "1"\neffective_from = 2026-01-01',
            "prices[0].meter",
            "did you mean 'dyno.seconds'",
        ),
        ('meter = "dyno.seconds"\neffective_from = 2026-01-01', "prices[0].unit_price", "missing"),
        (
            'meter = "dyno.seconds"\nunit_price = 0.01\neffective_from = 2026-01-01',
            "prices[0].unit_price",
            "a TOML float is inexact",
        ),
        (
            'meter = "dyno.seconds"\nunit_price = "-1"\neffective_from = 2026-01-01',
            "prices[0].unit_price",
            "decimal string",
        ),
        (
            'meter = "dyno.seconds"\nunit_price = "1e3"\neffective_from = 2026-01-01',
            "prices[0].unit_price",
            "decimal string",
        ),
        ('meter = "dyno.seconds"\nunit_price = "1"', "prices[0].effective_from", "missing"),
        (
            'meter = "dyno.seconds"\nunit_price = "1"\neffective_from = 2026-11-01T10:00:00Z',
            "prices[0].effective_from",
            "without a time",
        ),
        (
            'meter = "dyno.seconds"\nunit_price = "1"\neffective_from = "2026-02-30"',
            "prices[0].effective_from",
            "expected a date",
        ),
        (BASE + '\nmatch = { region = "eu" }', "prices[0].match.region", "not a dimension"),
        (BASE + '\nmatch = { size = "a", app = "b" }', "prices[0].match", "2 keys"),
        (BASE + '\nmatch = "size"', "prices[0].match", "expected one dimension"),
        (BASE + "\nround_places = 19", "prices[0].round_places", "between 0 and 18"),
        (BASE + '\nround_places = "0"', "prices[0].round_places", "integer"),
        (BASE + '\nrounding = "ceiling"', "prices[0].rounding", "needs round_places"),
        (BASE + '\nround_places = 0\nrounding = "upwards"', "prices[0].rounding", "half_even"),
        (BASE + '\nmonthly_cap = "1"\ndaily_cap = "1"', "prices[0].daily_cap", "not both"),
        (BASE + '\ndaily_cap = "0"', "prices[0].daily_cap", "greater than 0"),
        (BASE + "\nprice = 1", "prices[0].price", "unknown key"),
        (
            'meter = "api.active_users"\nunit_price = "1"\neffective_from = 2026-01-01\n'
            'monthly_cap = "5"',
            "prices[0].monthly_cap",
            "summed quantities",
        ),
    ],
)
def test_price_problems_are_named(tmp_path: Path, entry: str, key: str, expected: str) -> None:
    assert expected in problem_for(tmp_path, text(meters=prices(entry)), key)


def test_a_second_price_for_the_same_meter_match_and_date(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path, text(meters=prices(BASE, BASE.replace('"1"', '"2"'))), "prices[1].effective_from"
    )
    assert "prices[0] already prices 'dyno.seconds' from 2026-01-01" in problem


def test_matches_of_one_meter_use_one_dimension(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path,
        text(meters=prices(BASE + '\nmatch = { size = "l" }', BASE + '\nmatch = { app = "x" }')),
        "prices[1].match",
    )
    assert "prices[0] matches meter 'dyno.seconds' on 'size'" in problem


@pytest.mark.parametrize(
    ("billing", "key"),
    [
        ('currency = "usd"', "billing.currency"),
        ("amount_places = 9", "billing.amount_places"),
        ("path = 3", "billing.path"),
        ("curency = 'USD'", "billing.curency"),
    ],
)
def test_billing_problems_are_named(tmp_path: Path, billing: str, key: str) -> None:
    problem_for(tmp_path, text(top=f"[billing]\n{billing}\n"), key)


def test_shipped_price_book_loads() -> None:
    config = load(ROOT / "config.toml")
    priced = {rule.meter for rule in config.prices}
    assert priced == set(config.meters_by_name)  # every shipped meter has a price
    assert any(rule.match == ("size", "performance-l") for rule in config.prices)


# --- one duration convention; renamed keys ------------------------------------------------------


def test_every_duration_takes_the_same_form(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        text(
            store=STORE + '\ncommit_interval = "5ms"\nwal_checkpoint_interval = 0.25'
            '\ncheckpoint_interval = "1m"',
            ingest=INGEST + '\nkeepalive_interval = "1500ms"',
        ),
    )
    assert config.store.commit_interval == Duration(5)
    assert config.store.wal_checkpoint_interval == Duration(250)
    assert config.store.checkpoint_interval == Duration.of("60s")
    assert config.ingest.keepalive_interval.seconds == 1.5
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("old", "new", "duration"),
    [
        ("commit_interval_ms = 20", "commit_interval", Duration(20)),
        ("wal_checkpoint_interval_ms = 0", "wal_checkpoint_interval", Duration(0)),
        ("wal_checkpoint_interval_ms = 2000", "wal_checkpoint_interval", Duration(2000)),
    ],
)
def test_renamed_keys_still_work_with_a_warning_naming_the_new_key(
    tmp_path: Path, old: str, new: str, duration: Duration
) -> None:
    config = load_text(tmp_path, text(store=f"{STORE}\n{old}"))
    assert getattr(config.store, new) == duration
    old_key = old.split(" =")[0]
    [warning] = config.warnings
    assert warning.startswith(f"store.{old_key}: deprecated, renamed store.{new}: ")
    assert f'{new} = "{duration}"' in warning


def test_a_key_and_its_old_name_together(tmp_path: Path) -> None:
    content = text(store=STORE + '\ncommit_interval = "2ms"\ncommit_interval_ms = 2')
    problem = problem_for(tmp_path, content, "store.commit_interval_ms")
    assert "either commit_interval or commit_interval_ms" in problem


def test_the_old_name_is_not_suggested_for_a_typo(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path, text(store=STORE + "\ncommit_intervl = 2"), "store.commit_intervl"
    )
    assert "did you mean 'commit_interval'" in problem


def test_a_new_duration_out_of_its_bounds(tmp_path: Path) -> None:
    problem = problem_for(
        tmp_path, text(store=STORE + '\ncommit_interval = "2s"'), "store.commit_interval"
    )
    assert problem == "store.commit_interval: must be between 0ms and 1s, got '2s'"


# --- [partitions] --------------------------------------------------------------------------------


def test_partitions_default_to_256_in_16_shards_in_the_daemons_process(tmp_path: Path) -> None:
    partitions = load_text(tmp_path, text()).partitions
    assert (partitions.count, partitions.shard_size, partitions.owners) == (256, 16, 0)
    assert partitions.shards == 16


def test_partitions_are_read(tmp_path: Path) -> None:
    content = text() + "\n[partitions]\ncount = 64\nshard_size = 8\nowners = 3\n"
    partitions = load_text(tmp_path, content).partitions
    assert (partitions.count, partitions.shards, partitions.owners) == (64, 8, 3)


def test_a_shard_size_that_does_not_divide_the_count_is_named(tmp_path: Path) -> None:
    content = text() + "\n[partitions]\ncount = 100\nshard_size = 16\n"
    problem = problem_for(tmp_path, content, "partitions.shard_size")
    assert "does not divide partitions.count (100)" in problem


def test_more_owners_than_shards_is_named(tmp_path: Path) -> None:
    content = text() + "\n[partitions]\ncount = 32\nshard_size = 16\nowners = 3\n"
    problem = problem_for(tmp_path, content, "partitions.owners")
    assert "more than the 2 shards" in problem
