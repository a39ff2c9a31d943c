"""Listen addresses and TLS files: the two network values of the config."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterd.schema import Check, Invalid, KeyInfo, dotted, got, kind, show

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


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

    @classmethod
    def parse(cls, value: object) -> Listen:
        """``"HOST:PORT"`` (IPv6 in brackets) as a Listen; raises :class:`Invalid`."""
        expected = "expected 'HOST:PORT' (IPv6 as '[::1]:8700')"
        if not isinstance(value, str):
            raise Invalid(f"{expected}, {got(value)}")
        if value.startswith("["):
            match = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
            if match is None:
                raise Invalid(f"{expected}, got {show(value)}")
            host, port_text = match[1], match[2]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise Invalid(f"{host!r} in brackets is not an IPv6 address") from None
        else:
            host, colon, port_text = value.rpartition(":")
            if not colon:
                raise Invalid(f"{expected}, got {show(value)}")
            if ":" in host:
                raise Invalid(
                    f"an IPv6 address needs brackets, e.g. '[{host}]:{port_text}',"
                    f" got {show(value)}"
                )
            if not host:
                raise Invalid(f"the host is missing, got {show(value)}")
            if re.fullmatch(r"[0-9.]+", host):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise Invalid(f"{host!r} is not an IPv4 address") from None
            elif not _HOSTNAME.fullmatch(host):
                raise Invalid(f"{host!r} is not a host name or IP address")
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise Invalid(f"the port must be a number 1-65535, got {show(value)}")
        return cls(host, int(port_text))

    def overlaps(self, other: Listen) -> bool:
        """Whether binding both would collide (the same port on a shared address)."""
        if self.port != other.port:
            return False
        if self.host.lower() == other.host.lower() or "::" in (self.host, other.host):
            return True
        return any(
            wildcard.host == "0.0.0.0" and ":" not in host.host
            for wildcard, host in ((self, other), (other, self))
        )


@kind(Listen, "`HOST:PORT` (IPv6 as `[::1]:8700`)")
def _listen_kind(value: object, info: KeyInfo, check: Check) -> Listen:
    return value if isinstance(value, Listen) else Listen.parse(value)


class _NoPassword(Exception):
    """Raised by OpenSSL's password callback: the key is encrypted."""


def _no_password() -> str:
    raise _NoPassword


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


def check_tls(
    check: Check, prefix: str, table: Mapping[str, object], values: Mapping[str, Any]
) -> tuple[bool, bool]:
    """Check the ``tls_cert``/``tls_key`` pair of a checked table: both or neither, readable
    files, a certificate and its unencrypted key. Returns (whether TLS was asked for,
    whether it is usable)."""
    cert_key, key_key = dotted(prefix, "tls_cert"), dotted(prefix, "tls_key")
    given = [name for name in ("tls_cert", "tls_key") if name in table]
    if not given:
        return False, True
    if len(given) == 1:
        [name] = given
        missing, present = (key_key, cert_key) if name == "tls_cert" else (cert_key, key_key)
        check.problem(missing, f"missing: {present} is set, and the two go together")
        return True, False
    cert, key = values.get("tls_cert"), values.get("tls_key")
    readable = True
    for item_key, item in ((cert_key, cert), (key_key, key)):
        if item is None:
            readable = False
        elif not item.is_file():
            check.problem(item_key, f"no such file: {item}")
            readable = False
        elif not os.access(item, os.R_OK):
            check.problem(item_key, f"cannot read {item}: permission denied")
            readable = False
    if not readable or cert is None or key is None:
        return True, False
    try:
        Tls(cert, key).server_context()
    except _NoPassword:
        check.problem(key_key, "the private key is encrypted; meterd needs an unencrypted PEM key")
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            check.problem(key_key, f"does not match the certificate in {cert_key}")
        elif _is_certificate(cert):
            check.problem(key_key, "not a PEM private key")
        else:
            check.problem(cert_key, "not a PEM certificate")
    except OSError as error:
        check.problem(cert_key, f"cannot load the certificate and key: {error.strerror}")
    else:
        return True, True
    return True, False


def _is_certificate(path: Path) -> bool:
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True
