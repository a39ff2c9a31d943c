"""The operator commands' HTTP client for the daemon's API (protocol.md §3).

Where the API is and which token to present are resolved once per command by
:func:`resolve`, in this order: ``--url`` / ``$METERD_URL`` and ``$METERD_TOKEN``
first, then the ``[api]`` table of ``--config`` (``listen``, ``admin_token`` or
``admin_token_env``, ``tls_cert``), read with :func:`meterd.config.load`. The
config is only read when the environment leaves something open.

Every failure, local or remote, is an :class:`ApiError` holding one sentence
for the operator and the exit status (2: the command was used wrongly, or the
config is bad; 1: the API could not be reached or refused the request);
:func:`fail` prints it on stderr and exits. Nothing here ever prints the token.

Answers are parsed with ``parse_float=Decimal``: the API sends usage as decimal
strings, and a number that is not an integer must never become a float.
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlsplit

import click
import httpx

from meterd.cli._options import config_option

if TYPE_CHECKING:
    from meterd.config import Config, ConfigError

USAGE_ERROR = 2
API_ERROR = 1
TIMEOUT = 10.0  # seconds for connecting and for each read
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what fits in "Authorization: Bearer <token>"


class ApiError(Exception):
    """A failure the operator must see: ``str(error)`` is one sentence, ``status`` the exit
    status; ``unreachable`` when the API did not answer at all (worth retrying);
    ``http_status`` and ``code`` the API's answer when it gave one."""

    def __init__(
        self,
        message: str,
        status: int = API_ERROR,
        *,
        unreachable: bool = False,
        http_status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable
        self.http_status = http_status
        self.code = code


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API is, and how to authenticate to it."""

    url: str  # scheme://host:port, no trailing slash
    token: str = field(repr=False)
    verify: ssl.SSLContext | bool = True


def resolve(
    config_path: Path,
    url: str | None,
    env: Mapping[str, str] | None = None,
    *,
    cafile: Path | None = None,
) -> Endpoint:
    """The API endpoint from ``url`` (``--url`` or ``$METERD_URL``), ``$METERD_TOKEN`` and,
    for what they leave open, the config at ``config_path``; ``cafile`` is trusted for
    https besides the system's CAs (and the config's ``tls_cert`` when the address comes
    from the config)."""
    environ = os.environ if env is None else env
    url = url or environ.get("METERD_URL") or None
    token = environ.get("METERD_TOKEN") or None
    config: Config | None = None
    if url is None or token is None:
        # Imported only when needed: the loader's imports cost more than the rest of a
        # command when the environment already says where the API is.
        from meterd.config import ConfigError, load

        try:
            config = load(config_path, env=environ)
        except ConfigError as error:
            missing = " and ".join(
                name
                for name, value in (("METERD_URL", url), ("METERD_TOKEN", token))
                if value is None
            )
            raise ApiError(
                f"{missing} not set, and the config cannot be used: {_one_line(error)}",
                USAGE_ERROR,
            ) from None
    trusted = [cafile] if cafile is not None else []
    if url is None:
        assert config is not None
        api = config.api
        scheme = "https" if api.tls is not None else "http"
        url = f"{scheme}://{api.listen.connect_host}:{api.listen.port}"
        if api.tls is not None:
            trusted.append(api.tls.cert)
    verify = _trusting(trusted) if trusted else True
    if token is None:
        assert config is not None
        token = config.api.admin_token
    elif not _TOKEN.fullmatch(token):  # the config checks its own tokens the same way
        raise ApiError(
            "METERD_TOKEN is not a usable bearer token: printable ASCII without spaces",
            USAGE_ERROR,
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - checks the port is a number 0-65535
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as error:
        raise ApiError(
            f"the API address {_safe_url(url)!r} is not a valid URL ({error})", USAGE_ERROR
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(
            f"the API address {_safe_url(url)!r} is not an http:// or https:// URL"
            " (METERD_URL / --url take the API's address, e.g. http://127.0.0.1:8701)",
            USAGE_ERROR,
        )
    return Endpoint(url.rstrip("/"), token, verify)


def _trusting(certs: list[Path]) -> ssl.SSLContext:
    """The system's CAs plus ``certs`` (the daemon's own certificate is often self-signed)."""
    context = ssl.create_default_context()
    for cert in certs:
        try:
            context.load_verify_locations(cafile=cert)
        except (ssl.SSLError, OSError) as error:
            reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
            raise ApiError(f"cannot trust the certificate {cert}: {reason}", USAGE_ERROR) from None
    # The configured certificate is trusted as it is, even when it is not a self-signed root.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _one_line(error: ConfigError) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _safe_url(url: str) -> str:
    """``url`` without any user:password part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2]
    if parts.password is None and parts.username is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def path_segment(actor: str) -> str:
    """``actor`` as one URL path segment (a tree path's slashes are quoted too)."""
    return quote(actor, safe="")


class Api:
    """A synchronous client of the operator API; use as a context manager."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self._client = httpx.Client(
            base_url=endpoint.url,
            headers={"Authorization": f"Bearer {endpoint.token}"},
            verify=endpoint.verify,
            timeout=timeout,
            follow_redirects=False,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The JSON object answering ``GET path``; :class:`ApiError` for any failure."""
        return self._request("GET", path, params)

    def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The JSON object answering ``POST path`` (with ``body`` as JSON and ``headers``);
        :class:`ApiError` for any failure."""
        return self._request("POST", path, None, body, headers)

    def delete(self, path: str, params: Mapping[str, object] | None = None) -> dict[str, Any]:
        """The JSON object answering ``DELETE path?params``; :class:`ApiError` for any failure."""
        return self._request("DELETE", path, params)

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, object] | None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        query = {key: value for key, value in (params or {}).items() if value is not None}
        where = _safe_url(self.endpoint.url)
        try:
            response = self._client.request(
                method,
                path,
                params=query,  # type: ignore[arg-type]
                json=None if body is None else dict(body),
                headers=None if headers is None else dict(headers),
            )
        except httpx.TimeoutException:
            raise ApiError(
                f"the API at {where} did not answer within {TIMEOUT:g} s", unreachable=True
            ) from None
        except httpx.ConnectError as error:
            raise ApiError(
                f"cannot reach the API at {where}: {_reason(error)}", unreachable=True
            ) from None
        except httpx.RemoteProtocolError:
            hint = " (does it serve https?)" if where.startswith("http:") else ""
            raise ApiError(
                f"the API at {where} closed the connection without answering{hint}",
                unreachable=True,
            ) from None
        except httpx.HTTPError as error:
            raise ApiError(
                f"the request to the API at {where} failed: {_reason(error)}", unreachable=True
            ) from None
        answer = _answer(response, where)
        if not isinstance(answer, dict):
            raise ApiError(
                f"the API at {where} answered {method} {path.partition('?')[0]} with JSON that"
                " is not an object (is that address meterd's API?)"
            )
        return answer


def _reason(error: httpx.HTTPError) -> str:
    """The innermost OS or TLS reason of a transport error, in words."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"its TLS certificate was not accepted ({cause.verify_message});"
                " --cafile names a certificate to trust"
            )
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is meterd running, and is this its [api] listen address?)"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    text = str(error) or type(error).__name__
    return text.rstrip(".")


def _answer(response: httpx.Response, where: str) -> Any:
    try:
        body = json.loads(response.content, parse_float=Decimal) if response.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
        if response.is_success:
            raise ApiError(
                f"the API at {where} answered HTTP {response.status_code} with a body that is"
                " not JSON (is that address meterd's API?)"
            ) from None
    if response.is_success:
        return body
    code, message = _error_of(body)
    status = response.status_code
    if status == 401:
        raise ApiError(
            f"the API at {where} refused the admin token (HTTP 401): check METERD_TOKEN or"
            " [api] admin_token / admin_token_env in the config"
        )
    if message is None:
        raise ApiError(
            f"the API at {where} answered HTTP {status} {response.reason_phrase}"
            " (is that address meterd's API?)",
            http_status=status,
        )
    message = message.rstrip(".")
    raise ApiError(
        f"{message} (HTTP {status} {code})" if code else f"{message} (HTTP {status})",
        http_status=status,
        code=code,
    )


def _error_of(body: object) -> tuple[str | None, str | None]:
    """``(code, message)`` of an ``{"error": {"code", "message"}}`` body, else Nones."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code, message = error.get("code"), error.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) and message else None,
        )
    return None, None


def fail(command: str, error: ApiError) -> NoReturn:
    """Print ``error`` as one line on stderr, prefixed by ``meterd COMMAND:``, and exit."""
    click.echo(f"meterd {command}: {error}", err=True)
    sys.exit(error.status)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command's API is, as its options say (resolved by :func:`connect`)."""

    config_path: Path
    url: str | None
    cafile: Path | None


def api_options(function: Callable[..., None]) -> Callable[..., None]:
    """Add ``--config``, ``--url`` and ``--cafile`` to a command; it receives them as one
    ``target`` argument (a :class:`Target`)."""

    @functools.wraps(function)
    def command(
        *args: Any, config_path: Path, url: str | None, cafile: Path | None, **kwargs: Any
    ) -> None:
        function(*args, target=Target(config_path, url, cafile), **kwargs)

    options = [
        config_option(
            "Where [api] listen and the admin token are read from when $METERD_URL or"
            " $METERD_TOKEN is not set."
        ),
        click.option(
            "--url",
            envvar="METERD_URL",
            help="The API's address, http(s)://HOST:PORT. Default: $METERD_URL, else the"
            " config's [api] listen.",
        ),
        click.option(
            "--cafile",
            type=click.Path(path_type=Path, dir_okay=False),
            help="A PEM certificate to trust for https besides the system's CAs (the"
            " config's tls_cert is trusted when the address comes from the config).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def connect(command: str, target: Target) -> Api:
    """An :class:`Api` for ``target``, or exit with one sentence."""
    try:
        return Api(resolve(target.config_path, target.url, cafile=target.cafile))
    except ApiError as error:
        fail(command, error)
