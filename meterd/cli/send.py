"""``meterd send FILE|-``: send JSON Lines usage events to a running daemon.

Each non-blank line is one event, a JSON object with the protocol's keys (protocol.md §2.2).
Quantities are JSON integers or decimal strings (``"12.5"``); a JSON float (``12.5``,
``1e3``), ``NaN`` or ``Infinity`` anywhere is refused with the line number and the field,
because usage is billed exactly. The whole input is checked before anything is sent (a file
is read twice; standard input is kept in memory), so bad input sends nothing.

The endpoint is ``--url``, else ``$METERD_INGEST_URL``, else the ``[ingest] listen`` address of
``--config`` (default ``./config.toml``; ``wss://`` when it has TLS; an unspecified bind
address such as ``0.0.0.0`` means this host's loopback). The token is ``--token`` or
``$METERD_PRODUCER_TOKEN``.

Output: on a terminal, a progress bar (stderr) and a line each time the connection fails
and is retried (why, the next attempt's delay); then a summary on stdout: how many
events were sent in how long (and the rate), accepted, duplicates (already counted:
re-sending a file is safe) and rejected, the rejections grouped by code with a few example
lines each.

Exit status: 0 when every event was accepted or a duplicate, 1 when some were rejected,
2 for bad input, a bad config, a refused token or when the daemon cannot be reached for
``--give-up-after`` seconds (one sentence on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import click
import trio

from meterd import logs
from meterd.cli._options import config_option
from meterd.client import (
    INGEST_PATH,
    BatchResult,
    Producer,
    ProducerError,
    ProducerStats,
    Rejection,
    prepare_event,
)
from meterd.config import ConfigError, load

EXAMPLES_PER_CODE = 3


class BadInput(Exception):
    """The input cannot be sent as it is; the message names the line."""


class _JsonFloat:
    """Stands for a JSON float (or NaN/Infinity) while a line is parsed, to name its field."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _find_float(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _JsonFloat):
        return path, value.text
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_float(item, f"{path}.{key}" if path else key)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_float(item, f"{path}[{index}]")
            if found:
                return found
    return None


def parse_line(raw: bytes, number: int) -> dict[str, Any] | None:
    """The event on line ``number`` (None for a blank line); :class:`BadInput` if unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"line {number} is not valid UTF-8") from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_float=_JsonFloat, parse_constant=_JsonFloat)
    except json.JSONDecodeError as error:
        raise BadInput(
            f"line {number} is not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    except RecursionError:
        raise BadInput(f"line {number} is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadInput(
            f"line {number} holds a JSON {_json_kind(value)}; each line must be one event,"
            " a JSON object"
        )
    found = _find_float(value, "")
    if found:
        where, number_text = found
        if where == "quantity":
            advice = f'write it as an integer or a decimal string ("{number_text}")'
        elif where == "time":
            advice = "write it as an integer (Unix time in milliseconds)"
        else:
            advice = f'write it as a string ("{number_text}")'
        raise BadInput(
            f"line {number}: {where} is the JSON number {number_text}; floats are refused"
            f" because usage is billed exactly: {advice}"
        )
    try:
        prepare_event(value)
    except (TypeError, ValueError) as error:
        raise BadInput(f"line {number}: {error}") from None
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def read_events(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, event)`` for every non-blank line; :class:`BadInput` at the first
    unusable one."""
    for number, raw in enumerate(lines, start=1):
        event = parse_line(raw, number)
        if event is not None:
            yield number, event


def url_from_config(path: Path) -> str:
    """The ingest websocket URL of the daemon configured at ``path``."""
    config = load(path)
    listen = config.ingest.listen
    scheme = "wss" if config.ingest.tls is not None else "ws"
    return f"{scheme}://{listen.connect_host}:{listen.port}{INGEST_PATH}"


@dataclass
class Summary:
    """What the daemon answered, for the final report."""

    lines: list[int]  # ordinal -> line number
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, rejection: Rejection) -> None:
        self.rejected[rejection.code] += 1
        examples = self.examples.setdefault(rejection.code, [])
        if len(examples) < EXAMPLES_PER_CODE:
            line = self.lines[rejection.ordinal]
            ident = rejection.id
            shown = f", id {json.dumps(ident)}" if isinstance(ident, str) else ""
            examples.append(f"line {line}{shown}: {rejection.message}")

    def report(
        self, url: str, events: int, accepted: int, duplicates: int, seconds: float
    ) -> list[str]:
        total_rejected = sum(self.rejected.values())
        rate = f"{events / seconds:,.0f} events/s" if seconds > 0 else "-"
        out = [
            f"{events} {_plural(events, 'event')} sent to {url} in {seconds:.2f} s ({rate}):"
            f" {accepted} accepted, {duplicates} {_plural(duplicates, 'duplicate')},"
            f" {total_rejected} rejected"
        ]
        for code, count in sorted(self.rejected.items(), key=lambda item: (-item[1], item[0])):
            out.append(f"  rejected {code}: {count}")
            out.extend(f"    {example}" for example in self.examples[code])
            if count > len(self.examples[code]):
                out.append(f"    ... and {count - len(self.examples[code])} more")
        return out


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


async def send_events(producer: Producer, lines: Callable[[], Iterable[bytes]]) -> ProducerStats:
    """Send every event of ``lines()`` with ``producer`` and wait for every ack."""
    async with producer:
        for _, event in read_events(lines()):
            await producer.send(event)
    return producer.stats


def _fail(message: str) -> NoReturn:
    click.echo(f"meterd send: {message}", err=True)
    sys.exit(2)


@click.command("send")
@click.argument("source", metavar="FILE|-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "--url",
    envvar="METERD_INGEST_URL",
    help="ws://HOST:PORT/v1/ingest (or wss://). Default: $METERD_INGEST_URL, else the config's"
    " [ingest] listen.",
)
@click.option(
    "--token",
    envvar="METERD_PRODUCER_TOKEN",
    help="The producer's bearer token. Default: $METERD_PRODUCER_TOKEN.",
)
@config_option("Where to find [ingest] listen when no URL is given.")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Events per batch.",
)
@click.option(
    "--give-up-after",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Seconds without an ack (daemon unreachable) before giving up with status 2.",
)
@click.option(
    "--cafile",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM file of the CA to trust for wss:// (default: the system's).",
)
@click.option("--log-level", default="error", show_default=True, help="debug, info, warning, error")
def send(
    source: str,
    url: str | None,
    token: str | None,
    config_path: Path,
    max_batch: int,
    give_up_after: float,
    cafile: str | None,
    log_level: str,
) -> None:
    """Send the usage events of a JSON Lines FILE (- for standard input) and report what the
    daemon accepted, found duplicate and rejected.

    One event per line, for example (time in Unix milliseconds; docs/protocol.md):

    \b
    {"id": "run-42", "account": "acme", "meter": "dyno.seconds", "quantity": 3600,
     "time": 1795000000000, "properties": {"size": "standard-1x", "app": "web"}}

    Exit status 0: all accepted or duplicates; 1: some rejected; 2: bad input, no
    connection, or a refused token.
    """
    stream: BinaryIO
    if source == "-":
        kept = sys.stdin.buffer.readlines()

        def lines() -> Iterable[bytes]:
            return kept

    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - read twice, closed below
        except OSError as error:
            _fail(f"cannot read {source}: {error.strerror}")

        def lines() -> Iterable[bytes]:
            stream.seek(0)
            return stream

    with contextlib.ExitStack() as stack:
        if source != "-":
            stack.callback(stream.close)
        try:
            line_numbers = [number for number, _ in read_events(lines())]
        except BadInput as error:
            _fail(str(error))
        except OSError as error:
            _fail(f"cannot read {source}: {error.strerror}")
        if not line_numbers:
            _fail(f"{source} holds no events")

        if not token:
            _fail("no token: pass --token or set METERD_PRODUCER_TOKEN to the producer's token")
        if not url:
            try:
                url = url_from_config(config_path)
            except ConfigError as error:
                _fail(f"no --url or METERD_INGEST_URL, and the config gives none: {error}")
        try:
            ssl_context = ssl.create_default_context(cafile=cafile) if cafile else None
        except (ssl.SSLError, OSError) as error:
            _fail(f"cannot use --cafile {cafile}: {error}")
        logs.configure(level=log_level)
        summary = Summary(line_numbers)
        bar: Any = None
        if sys.stderr.isatty():
            bar = stack.enter_context(
                click.progressbar(length=len(line_numbers), label="sending", file=sys.stderr)
            )

        on_bar_line = [bar is not None]  # the cursor is after the bar, on its line

        def progress(result: BatchResult) -> None:
            if bar is not None:
                bar.update(result.events)
                on_bar_line[0] = True

        def say(message: str) -> None:
            """A line on stderr, never glued to the progress bar's line."""
            click.echo(("\n" if on_bar_line[0] else "") + f"meterd send: {message}", err=True)
            on_bar_line[0] = False

        def retrying(reason: str, attempt: int, delay: float) -> None:
            if bar is None:  # not a terminal: the one sentence at the end (and the log)
                return
            say(
                f"no connection ({reason}); retrying in {delay:.1f} s (attempt {attempt},"
                f" giving up after {give_up_after:g} s without an ack)"
            )

        try:
            producer = Producer(
                url,
                token,
                max_batch=max_batch,
                on_rejected=summary.add,
                on_result=progress,
                ssl_context=ssl_context,
                give_up_after=give_up_after,
                on_retry=retrying,
            )
        except ValueError as error:
            _fail(str(error))
        started = time.monotonic()
        try:
            stats = trio.run(send_events, producer, lines)
        except (ProducerError, BadInput) as error:
            failed = str(error)
            stack.close()  # the bar ends its line, then the error has a line of its own
            _fail(failed)
        elapsed = time.monotonic() - started
    for line in summary.report(
        producer.safe_url, len(line_numbers), stats.accepted, stats.duplicates, elapsed
    ):
        click.echo(line)
    sys.exit(1 if stats.rejected_total else 0)


if __name__ == "__main__":
    send(prog_name="meterd send")
