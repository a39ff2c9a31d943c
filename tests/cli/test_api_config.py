"""Where the operator commands find the API and its token, and how they fail.

The address and token come from ``$METERD_URL`` / ``--url`` and ``$METERD_TOKEN`` first,
then from the config's ``[api]`` table; every failure is one sentence on stderr (never
a traceback, never the token) with exit status 2 (usage, config) or 1 (the API).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import ssl
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meterd.cli._api import USAGE_ERROR, ApiError, _answer, path_segment, resolve
from meterd.cli._output import echo_json
from meterd.config import Tls
from tests.ingest.test_server import ADMIN_TOKEN, certificate, make_config, running
from tests.system.test_kill9 import free_ports

__all__ = ["certificate"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-admin-token"


def config_file(tmp_path: Path, api: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'[ingest]\nlisten = "127.0.0.1:18700"\n\n[api]\n{api}\n\n'
        '[[meters]]\nname = "dyno.seconds"\naggregation = "sum"\n'
    )
    return path


def test_the_config_gives_address_and_token(tmp_path: Path) -> None:
    path = config_file(tmp_path, f'listen = "127.0.0.1:18701"\nadmin_token = "{TOKEN}"')
    endpoint = resolve(path, None, env={})
    assert endpoint.url == "http://127.0.0.1:18701"
    assert endpoint.token == TOKEN
    assert endpoint.verify is True
    assert TOKEN not in repr(endpoint)


def test_an_admin_token_from_the_environment_of_the_config(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'listen = "127.0.0.1:18701"\nadmin_token_env = "ADMIN"')
    assert resolve(path, None, env={"ADMIN": TOKEN}).token == TOKEN


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:18701", "http://127.0.0.1:18701"),
        ("[::]:18701", "http://[::1]:18701"),
        ("[::1]:18701", "http://[::1]:18701"),
        ("localhost:18701", "http://localhost:18701"),
    ],
)
def test_an_unspecified_bind_address_is_reached_on_loopback(
    tmp_path: Path, listen: str, url: str
) -> None:
    path = config_file(tmp_path, f'listen = "{listen}"\nadmin_token = "{TOKEN}"')
    assert resolve(path, None, env={}).url == url


def test_the_environment_wins_over_the_config(tmp_path: Path) -> None:
    path = config_file(tmp_path, f'listen = "127.0.0.1:18701"\nadmin_token = "{TOKEN}"')
    env = {"METERD_URL": "http://10.1.2.3:9000/", "METERD_TOKEN": "env-token"}
    endpoint = resolve(path, None, env=env)
    assert (endpoint.url, endpoint.token) == ("http://10.1.2.3:9000", "env-token")
    # each one alone overrides only its half
    assert resolve(path, None, env={"METERD_TOKEN": "env-token"}).url == "http://127.0.0.1:18701"
    assert resolve(path, None, env={"METERD_URL": "http://h:1"}).token == TOKEN
    # --url (click reads $METERD_URL into it too) over the config
    assert resolve(path, "https://h:2", env={}).url == "https://h:2"


def test_with_both_in_the_environment_the_config_is_not_read(tmp_path: Path) -> None:
    env = {"METERD_URL": "http://127.0.0.1:1", "METERD_TOKEN": "env-token"}
    assert resolve(tmp_path / "missing.toml", None, env=env).token == "env-token"


def test_tls_in_the_config_means_https_trusting_its_certificate(
    tmp_path: Path, certificate: Tls
) -> None:
    path = config_file(
        tmp_path,
        f'listen = "127.0.0.1:18701"\nadmin_token = "{TOKEN}"\n'
        f'tls_cert = "{certificate.cert}"\ntls_key = "{certificate.key}"',
    )
    endpoint = resolve(path, None, env={})
    assert endpoint.url == "https://127.0.0.1:18701"
    assert isinstance(endpoint.verify, ssl.SSLContext)
    assert endpoint.verify.verify_mode is ssl.CERT_REQUIRED
    assert endpoint.verify.check_hostname
    [trusted] = [
        cert
        for cert in endpoint.verify.get_ca_certs()
        if (("commonName", "localhost"),) in cert["subject"]
    ]
    assert trusted["subjectAltName"] == (("IP Address", "127.0.0.1"), ("DNS", "localhost"))


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({}, ["METERD_URL and METERD_TOKEN not set", "no such config file"]),
        ({"METERD_URL": "http://h:1"}, ["METERD_TOKEN not set", "no such config file"]),
        (
            {"METERD_URL": "http://[::1:8701", "METERD_TOKEN": "x"},
            ["the API address 'http://[::1:8701' is not a valid URL (Invalid IPv6 URL)"],
        ),
        (
            {"METERD_URL": "http://user:pw@h:87010", "METERD_TOKEN": "x"},
            ["the API address 'http://h:87010' is not a valid URL (Port out of range"],
        ),
        (
            {"METERD_URL": "http://h:1", "METERD_TOKEN": "tök en"},
            ["METERD_TOKEN is not a usable bearer token: printable ASCII without spaces"],
        ),
        (
            {"METERD_URL": "ws://127.0.0.1:8700/v1/ingest", "METERD_TOKEN": "x"},
            ["'ws://127.0.0.1:8700/v1/ingest' is not an http:// or https:// URL"],
        ),
    ],
)
def test_what_cannot_be_resolved_is_a_usage_error(
    tmp_path: Path, env: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(ApiError) as raised:
        resolve(tmp_path / "missing.toml", None, env=env)
    assert raised.value.status == USAGE_ERROR
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_a_bad_config_is_named_on_one_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'listen = "nowhere"\nadmin_tokn = "x"')
    with pytest.raises(ApiError) as raised:
        resolve(path, None, env={})
    message = str(raised.value)
    assert "\n" not in message
    assert "api.listen" in message
    assert "api.admin_tokn: unknown key (did you mean 'admin_token'?)" in message


def test_a_tree_path_is_one_url_segment() -> None:
    assert path_segment("root/accounts/sweeper") == "root%2Faccounts%2Fsweeper"
    assert path_segment("user:42@initech") == "user%3A42%40initech"


# ---- the real command, as an operator runs it ------------------------------------------


def meterd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    return subprocess.run(
        [sys.executable, "-m", "meterd", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_sentence(
    result: subprocess.CompletedProcess[str], status: int, prefix: str, *fragments: str
) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(prefix)
    for fragment in fragments:
        assert fragment in message
    assert result.stdout == ""
    assert TOKEN not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["tree"],
        ["tree", "--watch"],  # a first failure is not retried for ever
        ["usage", "acme", "--meter", "dyno.seconds", "--from", "2026-11-01", "--to", "2026-12-01"],
        ["events", "acme", "--all"],
        ["restart", "root/accounts/sweeper"],
        ["kill", "acme", "--yes"],
        ["quarantine"],
    ],
    ids=lambda command: "-".join(command[:2]),
)
def test_an_unreachable_api_is_one_sentence_and_status_1(command: list[str]) -> None:
    [port] = free_ports(1)
    result = meterd(*command, METERD_URL=f"http://127.0.0.1:{port}", METERD_TOKEN=TOKEN)
    assert_one_sentence(
        result,
        1,
        f"meterd {command[0]}: cannot reach the API at http://127.0.0.1:{port}: connection refused",
    )


def test_the_config_is_found_through_config(tmp_path: Path) -> None:
    [port] = free_ports(1)
    path = config_file(tmp_path, f'listen = "127.0.0.1:{port}"\nadmin_token = "{TOKEN}"')
    result = meterd("quarantine", "--config", str(path))
    assert_one_sentence(
        result, 1, f"meterd quarantine: cannot reach the API at http://127.0.0.1:{port}:"
    )


def test_a_missing_config_is_status_2(tmp_path: Path) -> None:
    result = meterd("tree", "--config", str(tmp_path / "none.toml"))
    assert_one_sentence(result, 2, "meterd tree: METERD_URL and METERD_TOKEN not set")


def test_kill_without_a_terminal_needs_yes() -> None:
    result = meterd("kill", "acme", METERD_URL="http://127.0.0.1:1", METERD_TOKEN=TOKEN)
    assert_one_sentence(result, 2, "meterd kill: not killing acme without confirmation: pass --yes")


# ---- answers: what the API says becomes one sentence -----------------------------------


def answer(status: int, body: bytes, content_type: str = "application/json") -> Any:
    response = httpx.Response(status, content=body, headers={"content-type": content_type})
    return _answer(response, "http://127.0.0.1:8701")


def test_a_success_keeps_decimals_exact() -> None:
    document = answer(200, b'{"value": "0.1", "odd": 0.1, "big": 12345678901234567890.5}')
    assert document == {
        "value": "0.1",
        "odd": Decimal("0.1"),
        "big": Decimal("12345678901234567890.5"),
    }


@pytest.mark.parametrize(
    ("status", "body", "sentence"),
    [
        (
            401,
            b'{"error": {"code": "unauthorized", "message": "a bearer token is required"}}',
            "the API at http://127.0.0.1:8701 refused the admin token (HTTP 401): check"
            " METERD_TOKEN or [api] admin_token / admin_token_env in the config",
        ),
        (
            404,
            b'{"error": {"code": "not_found", "message": "unknown account \'nope\'."}}',
            "unknown account 'nope' (HTTP 404 not_found)",
        ),
        (
            409,
            b'{"error": {"code": "not_running", "message": "acme is hibernated"}}',
            "acme is hibernated (HTTP 409 not_running)",
        ),
        (
            502,
            b"<html>Bad Gateway</html>",
            "the API at http://127.0.0.1:8701 answered HTTP 502 Bad Gateway (is that address"
            " meterd's API?)",
        ),
    ],
)
def test_an_error_answer_is_one_sentence(status: int, body: bytes, sentence: str) -> None:
    with pytest.raises(ApiError) as raised:
        answer(status, body)
    assert str(raised.value) == sentence
    assert raised.value.status == 1
    assert not raised.value.unreachable


def test_a_success_that_is_not_json_is_named() -> None:
    with pytest.raises(ApiError, match="answered HTTP 200 with a body that is not JSON"):
        answer(200, b"<html>hello</html>", "text/html")


def test_cafile_is_trusted_for_an_address_from_the_environment(
    tmp_path: Path, certificate: Tls
) -> None:
    env = {"METERD_URL": "https://127.0.0.1:18701", "METERD_TOKEN": TOKEN}
    assert resolve(tmp_path / "missing.toml", None, env=env).verify is True
    endpoint = resolve(tmp_path / "missing.toml", None, env=env, cafile=certificate.cert)
    assert isinstance(endpoint.verify, ssl.SSLContext)
    assert any(
        (("commonName", "localhost"),) in cert["subject"] for cert in endpoint.verify.get_ca_certs()
    )
    with pytest.raises(ApiError, match=r"cannot trust the certificate .*none\.pem: No such file"):
        resolve(tmp_path / "missing.toml", None, env=env, cafile=tmp_path / "none.pem")


@pytest.mark.parametrize(("answer", "said"), [("n", "not killed"), ("y", "cannot reach the API")])
def test_kill_asks_on_a_terminal(answer: str, said: str) -> None:
    [port] = free_ports(1)  # nothing listens: a "y" goes on to the (unreachable) API
    controller, terminal = os.openpty()
    try:
        os.write(controller, f"{answer}\n".encode())
        clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
        result = subprocess.run(
            [sys.executable, "-m", "meterd", "kill", "acme"],
            stdin=terminal,
            capture_output=True,
            text=True,
            env={**clean, "METERD_URL": f"http://127.0.0.1:{port}", "METERD_TOKEN": TOKEN},
            cwd=ROOT,
            timeout=60,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.stdout.startswith("Kill acme? Its supervisor will restart it [y/N]: ")
    assert result.returncode == 1
    assert said in result.stderr
    assert "Traceback" not in result.stderr


def test_with_the_environment_set_the_config_loader_is_not_even_imported() -> None:
    # It imports much (billing, GraphQL): ~0.3 s of every command's start-up.
    [port] = free_ports(1)
    program = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from meterd.cli.main import main\n"
        "result = CliRunner().invoke(main, ['tree'])\n"
        "print(result.exit_code, 'cannot reach' in result.stderr, 'meterd.config' in sys.modules)"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env={**clean, "METERD_URL": f"http://127.0.0.1:{port}", "METERD_TOKEN": TOKEN},
        cwd=ROOT,
        timeout=60,
    )
    assert result.stdout.split() == ["1", "True", "False"], result.stderr


async def test_https_with_the_daemons_own_certificate(tmp_path: Path, certificate: Tls) -> None:
    """An in-process daemon serving the API over TLS (a self-signed certificate): trusted
    through the config's tls_cert or --cafile, refused in one sentence otherwise."""
    config = make_config(tmp_path)
    config = replace(
        config, api=replace(config.api, tls_cert=certificate.cert, tls_key=certificate.key)
    )
    async with running(config) as services:
        url = services.api.url
        assert url.startswith("https://127.0.0.1:")
        clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}

        async def tree(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
            return await trio.run_process(
                [sys.executable, "-m", "meterd", "tree", *args],
                capture_stdout=True,
                capture_stderr=True,
                env={**clean, **env},
                cwd=ROOT,
                check=False,
            )

        refused = await tree(METERD_URL=url, METERD_TOKEN=ADMIN_TOKEN)
        assert refused.returncode == 1
        assert refused.stderr.decode() == (
            f"meterd tree: cannot reach the API at {url}: its TLS certificate was not accepted"
            " (self-signed certificate); --cafile names a certificate to trust\n"
        )
        trusted = await tree(
            "--cafile", str(certificate.cert), METERD_URL=url, METERD_TOKEN=ADMIN_TOKEN
        )
        assert trusted.returncode == 0, trusted.stderr
        assert trusted.stdout.decode().startswith("root  supervisor rest_for_one  running")
        from_config = config_file(
            tmp_path,
            f'listen = "127.0.0.1:{url.rpartition(":")[2]}"\nadmin_token = "{ADMIN_TOKEN}"\n'
            f'tls_cert = "{certificate.cert}"\ntls_key = "{certificate.key}"',
            name="operator.toml",
        )
        configured = await tree("--config", str(from_config))
        assert configured.returncode == 0, configured.stderr
        assert configured.stdout.decode().startswith("root  supervisor rest_for_one  running")
        plain = await tree(METERD_URL="http" + url.removeprefix("https"), METERD_TOKEN=ADMIN_TOKEN)
        assert plain.returncode == 1
        assert b"closed the connection without answering (does it serve https?)" in plain.stderr


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_a_number_passes_through_exactly(value: Decimal) -> None:
    as_string = str(value)  # the contract: decimals as strings, printed as received
    body = json.dumps({"value": as_string}).encode()[:-1] + f', "number": {as_string}}}'.encode()
    document = answer(200, body)
    assert document["value"] == as_string
    assert Decimal(document["number"]) == value  # a JSON number is never a float here
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        echo_json(document)
    again = json.loads(printed.getvalue())
    assert again["value"] == as_string
    assert Decimal(again["number"]) == value
    if isinstance(document["number"], Decimal):  # written as its exact decimal string
        assert again["number"] == str(document["number"])
    else:  # an integer stays an integer
        assert again["number"] == document["number"] == int(value)
