"""``meterd bench``: every benchmark of :mod:`meterd.bench`, one subcommand each.

``meterd bench ingest`` (:mod:`meterd.bench.ingest`) and ``meterd bench rating``
(:mod:`meterd.bench.rating`) drive a daemon from outside, as producers do, and have their own
options here. The others are modules with a ``main(argv)`` (argparse), registered from
:data:`MODULES`: ``meterd bench NAME ARGS...`` is ``python -m meterd.bench.NAME ARGS...``
(``--help`` is the module's); ``meterd bench partitions`` (:mod:`meterd.bench.partitions`)
names its own program. docs/benchmarks.md lists them all. Figures, never pass/fail
thresholds; progress goes to stderr, the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import trio


@click.group()
def bench() -> None:
    """Benchmarks (figures only; nothing fails on a number). docs/benchmarks.md lists them."""


#: ``meterd bench NAME`` runs ``meterd.bench.NAME.main(argv)``; NAME: what it measures.
MODULES: dict[str, str] = {
    "supervisors": "The supervisors library against triotp and Erlang/OTP.",
    "accounts": "Meter actors + store (no network) against a naive pipeline; --burst.",
    "store": "The store writer against a naive SQLite design.",
    "writer": "CPU per event of the store writer, against main's and a naive insert.",
    "validate": "CPU per event of decoding and validating producer batches.",
    "deliver": "CPU per event of delivering committed batches to the meter actors.",
    "pages": "SQLite pages written per event, table by table.",
    "retention": "Disk bytes per event with dedupe retention, against main.",
    "nats_bridge": "JetStream publishes from Trio through the bridge, against asyncio nats-py.",
    "alerts": "Alert evaluation per event with 10 rules, and deliveries/s, against baselines.",
    "owner": "CPU per event of a partition owner process, against the same events in-process.",
    "floor": "An owner's CPU against its event rate: the per-second floor and per-event cost.",
    "start": "Seconds for meterd run with owner processes to listen, against a revision.",
    "cluster": "One cluster node against two on one NATS, latency, takeover; vs embedded.",
}


def _module_command(name: str, summary: str) -> click.Command:
    """``meterd bench NAME ARGS...``: the module's own ``main`` with ARGS, unparsed here."""

    def run(args: tuple[str, ...]) -> None:
        module = importlib.import_module(f"meterd.bench.{name}")
        code = module.main(list(args))
        sys.stdout.flush()
        if code:
            sys.exit(code)

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=f"{summary} Options: `python -m meterd.bench.{name} --help`.",
        short_help=summary,
        add_help_option=False,  # --help goes to the module
        context_settings={"ignore_unknown_options": True},
    )


for _name, _summary in MODULES.items():
    bench.add_command(_module_command(_name, _summary))


@bench.command("ingest")
@click.option(
    "--events", type=click.IntRange(1), default=None, help="Events in the max run [200,000]."
)
@click.option(
    "--accounts", type=click.IntRange(1), default=None, help="Accounts drawn from [10,000]."
)
@click.option("--connections", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--batch", type=click.IntRange(1), default=500, show_default=True, help="Events per batch."
)
@click.option("--url", default=None, help="A running daemon's endpoint, ws://HOST:PORT/v1/ingest.")
@click.option(
    "--token",
    envvar="METERD_PRODUCER_TOKEN",
    default=None,
    help="Its producer token (with --url). Default: $METERD_PRODUCER_TOKEN.",
)
@click.option(
    "--pid", type=int, default=None, help="Its process, for CPU/RSS (default: found from the port)."
)
@click.option("--cafile", default=None, help="CA bundle for a wss:// --url.")
@click.option(
    "--max-in-flight",
    type=click.IntRange(1),
    default=None,
    help="Batches each connection keeps unacknowledged [the server's window, from hello].",
)
@click.option(
    "--spawn",
    is_flag=True,
    help="Start `python -m meterd run` on a temporary config (free loopback ports, tmp store)"
    " and stop it after.",
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also run the same load against the minimal baseline server.",
)
@click.option(
    "--half-load/--no-half-load",
    default=True,
    show_default=True,
    help="Also measure ack latency at half the measured max rate (open loop).",
)
@click.option(
    "--half-load-seconds",
    type=click.FloatRange(min=0.1),
    default=None,
    help="How long the half-load row lasts [10; quick: 3].",
)
@click.option(
    "--half-load-rate",
    type=click.FloatRange(min=1),
    default=None,
    help="Events/s offered in the half-load row instead of half the max row's rate (the"
    " same load for every server and setting compared).",
)
@click.option(
    "--half-load-min-batches",
    type=click.IntRange(0),
    default=None,
    help="The half-load row lasts long enough for this many batches (latency samples)"
    " [100; quick: 0].",
)
@click.option(
    "--resend/--no-resend",
    default=False,
    show_default=True,
    help="Also re-send the max run's events on new connections (all duplicates: the cost"
    " of a reconnect's re-send).",
)
@click.option(
    "--warmup/--no-warmup",
    default=True,
    show_default=True,
    help="Untimed: one event per account first, so every account is awake.",
)
@click.option(
    "--meter",
    default="dyno.seconds",
    show_default=True,
    help="The meter every event writes (with --url: a meter the producer may write).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--quick", is_flag=True, help="Small sizes: 20,000 events, 1,000 accounts, 3 s half load."
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record meterd during the max run with `py-spy record --gil` into this file (raw"
    " collapsed stacks) and print a summary to stderr.",
)
@click.option("--py-spy", "py_spy", default="py-spy", show_default=True, help="py-spy to use.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="With --spawn: a setting for the daemon's config (TOML value), repeatable; e.g."
    " --set ingest.max_in_flight_events=4000 --set 'store.commit_interval=\"5ms\"'.",
)
@click.option(
    "--keep-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --spawn: copy the daemon's log (JSON lines) here when it stops.",
)
@click.option(
    "--owners",
    default=None,
    metavar="N,N,...",
    help="With --spawn: run the same load once per value, with [partitions] owners = N"
    " (0: one process), and print the scaling curve beside the baseline of the same"
    " command. Every figure is over all of meterd's processes (the gateway and its owners)"
    " and per process. On a 2-core machine the load generator, the gateway and the owners"
    " share the two cores: more owners than cores adds CPU per event without adding"
    " events/s, and CPU µs per event (summed over the processes) is the steadier figure.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def ingest(
    events: int | None,
    accounts: int | None,
    half_load_seconds: float | None,
    half_load_min_batches: int | None,
    quick: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Producers over websockets (raw trio-websocket): events/s acked, ack latency p50/p99,
    the server's CPU and RSS, at max load and at half of it, against meterd and a baseline
    (decode + SQLite INSERT per batch, WAL, synchronous=FULL). Needs --spawn, or --url and
    --token (the events then stay in that daemon's store). See docs/ingest-bench.md."""
    from meterd.bench.ingest import (
        BenchError,
        BenchOptions,
        format_report,
        parse_owners,
        parse_setting,
        run,
    )

    sizes: dict[str, Any] = {
        key: value
        for key, value in (
            ("events", events),
            ("accounts", accounts),
            ("half_load_seconds", half_load_seconds),
            ("half_load_min_batches", half_load_min_batches),
        )
        if value is not None
    }
    try:
        options["settings"] = tuple(parse_setting(text) for text in options["settings"])
        options["owners"] = parse_owners(options["owners"])
        settings = (
            BenchOptions.quick(**options, **sizes) if quick else BenchOptions(**options, **sizes)
        )
        settings.check()
    except BenchError as error:
        raise click.ClickException(str(error)) from None
    _run_and_print(run, settings, format_report, as_json=as_json)


@bench.command("rating")
@click.option(
    "--sizes",
    default=None,
    metavar="N,N,...",
    help="Invoice lines (distinct dimension values) to rate [5000,10000,20000,50000];"
    " the largest is rated during the latency row.",
)
@click.option(
    "--repeats", type=click.IntRange(1), default=None, help="Timed requests per size [3]."
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5),
    default=None,
    help="Length of each latency row (baseline, while rating) [20].",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.001),
    default=0.05,
    show_default=True,
    help="Seconds between two events of the steady producer.",
)
@click.option("--quick", is_flag=True, help="Small sizes: 1,000, 2,000, 5,000 lines; 5 s rows.")
@click.option(
    "--keep-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Copy the daemon's log (JSON lines) here when it stops.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def rating(
    sizes: str | None,
    repeats: int | None,
    seconds: float | None,
    interval: float,
    quick: bool,
    keep_log: Path | None,
    as_json: bool,
) -> None:
    """Rating an invoice whose lines each have their own dimension value, on a daemon it
    starts: the request's time for each size, and a steady producer's ack latency (and
    /healthz) while the largest is rated, beside the same producer with no invoice
    request. See docs/billing.md."""
    from meterd.bench.ingest import BenchError
    from meterd.bench.rating import RatingOptions, format_report, run

    overrides: dict[str, Any] = {"interval": interval, "keep_log": keep_log}
    if sizes is not None:
        try:
            overrides["sizes"] = tuple(int(part) for part in sizes.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{sizes!r}: expected numbers of lines separated by commas", param_hint="--sizes"
            ) from None
    if repeats is not None:
        overrides["repeats"] = repeats
    if seconds is not None:
        overrides["seconds"] = seconds
    try:
        options = RatingOptions.quick(**overrides) if quick else RatingOptions(**overrides)
        options.check()
    except BenchError as error:
        raise click.ClickException(str(error)) from None
    _run_and_print(run, options, format_report, as_json=as_json)


@bench.command(
    "partitions",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def partitions(args: tuple[str, ...]) -> None:
    """The storage unit of a partition owner: 1 file, shards, 1 file per partition, side by
    side; and the account -> partition hash (``--help`` for the options; docs/partitions.md)."""
    from meterd.bench.partitions import main

    main(list(args), prog="meterd bench partitions")


@bench.command(
    "migrate",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def migrate(args: tuple[str, ...]) -> None:
    """How long ``meterd migrate partitions`` takes for a store of N events, beside copying
    its file (``--help`` for the options; docs/partitions.md)."""
    from meterd.bench.migrate import main

    main(list(args), prog="meterd bench migrate")


def _run_and_print(
    run: Callable[[Any], Awaitable[Any]],
    options: Any,
    format_report: Callable[[Any], str],
    *,
    as_json: bool,
) -> None:
    """Run a benchmark under Trio and print its report (JSON, or the formatted tables); a
    :class:`~meterd.bench.ingest.BenchError`, even from inside a task group, is one line."""
    from meterd.bench.ingest import BenchError

    try:
        report = trio.run(run, options)
    except BenchError as error:
        raise click.ClickException(str(error)) from None
    except BaseExceptionGroup as group:
        found = _bench_error(group)
        if found is None:
            raise
        raise click.ClickException(str(found)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report))
    sys.stdout.flush()


def _bench_error(group: BaseExceptionGroup[Any]) -> BaseException | None:
    from meterd.bench.ingest import BenchError

    for error in group.exceptions:
        if isinstance(error, BenchError):
            return error
        if isinstance(error, BaseExceptionGroup) and (found := _bench_error(error)) is not None:
            return found
    return None
