"""``meterd bench ingest --quick --spawn`` runs end to end and prints every figure.

Checks that the figures are there, never their values (a benchmark is not a timed test).
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterd.bench._proc import write_bytes
from meterd.bench.ingest import (
    BenchOptions,
    Report,
    RunResult,
    TargetReport,
    build_load,
    format_report,
    percentile,
)
from meterd.cli.bench import bench

FIGURES = (
    "max: events acked of sent",
    "max: events/s acked",
    "max: batches in flight per connection",
    "max: ack latency p50, ms",
    "max: ack latency p99, ms",
    "max: server CPU, % of one core",
    "max: server CPU, µs per event",
    "max: server busy after the last ack, s",
    "max: server CPU with the work after the last ack, µs per event",
    "max: server RSS peak, MiB",
    "max: server storage writes, KiB per event",
    "max: load generator CPU, % of one core",
    "half load: offered events/s",
    "half load: events/s acked",
    "half load: ack latency p50, ms",
    "half load: ack latency p99, ms",
    "half load: server CPU, µs per event",
    "half load: server busy after the last ack, s",
    "half load: server CPU with the work after the last ack, µs per event",
    "half load: server storage writes, KiB per event",
    "half load: server GC pauses, ms per second",
    "half load: server GC collections",
)
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


#: ``--quick`` made smaller still: the figures are the same rows whatever the load.
TINY = ["--events", "2000", "--accounts", "100", "--half-load-seconds", "0.5"]


def test_quick_spawn_prints_every_figure_for_meterd_and_the_baseline() -> None:
    # About 5 s here (meterd, then the baseline, each with a 0.5 s half-load row).
    result = CliRunner().invoke(
        bench, ["ingest", "--quick", "--spawn", *TINY], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    check_every_figure(result.stdout)


@pytest.mark.slow  # with -m slow only (tests/conftest.py)
def test_quick_spawn_at_its_own_sizes_prints_every_figure() -> None:
    """``--quick`` as docs/ingest-bench.md gives it (20,000 events, 3 s half load)."""
    # About 13 s here (meterd, then the baseline, each with a 3 s half-load row).
    result = CliRunner().invoke(bench, ["ingest", "--quick", "--spawn"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    check_every_figure(result.stdout)


def check_every_figure(out: str) -> None:
    """Every figure's row, for meterd and the baseline with their ratio, and the run's notes."""
    assert re.search(r"\|\s*figure\s*\|\s*meterd\s*\|\s*baseline\s*\|\s*ratio\s*\|", out), out
    for figure in FIGURES:
        row = re.search(rf"^\| {re.escape(figure)}\s*\|(.*)\|\s*$", out, re.MULTILINE)
        assert row is not None, f"no row {figure!r} in:\n{out}"
        cells = [cell.strip() for cell in row[1].split("|")]
        assert len(cells) == 3, row[0]  # meterd, baseline, ratio
        if figure.endswith("acked of sent"):
            assert all(re.fullmatch(r"all|FAILED at \d+%|skipped", c) for c in cells[:2]), row[0]
            assert cells[2] == "—", row[0]
        elif figure.startswith("max: "):
            assert all(re.fullmatch(NUMBER, cell) for cell in cells[:2]), row[0]
            if re.fullmatch(r"0(\.0+)?", cells[1]):  # no ratio to a zero (an idle baseline)
                assert cells[2] == "—", row[0]
            else:
                assert re.fullmatch(rf"{NUMBER}x", cells[2]), row[0]
        else:  # half-load rows are empty ("—") when the max run failed
            assert all(re.fullmatch(rf"{NUMBER}|—", cell) for cell in cells[:2]), row[0]
            assert re.fullmatch(rf"{NUMBER}x|—", cells[2]), row[0]
    assert "ratio = meterd / baseline." in out
    # The collector's pauses come from the spawned meterd's /metrics (the baseline has none).
    gc_row = re.search(r"^\| half load: server GC collections\s*\|(.*)\|\s*$", out, re.MULTILINE)
    assert gc_row is not None
    assert [cell.strip() for cell in gc_row[1].split("|")][:2][1] == "—", gc_row[0]
    assert re.fullmatch(NUMBER, gc_row[1].split("|")[0].strip()), gc_row[0]
    assert re.search(r"meterd \(ws://127\.0\.0\.1:\d+/v1/ingest, pid \d+\)", out)
    assert re.search(r"SIGTERM: exit 0", out)
    assert re.search(r"goal: meterd ack latency p99 < 50 ms at half load: .* (met|NOT met)", out)
    assert re.search(
        rf"goal: meterd CPU <= 25 µs per event, all processes, max row: {NUMBER} to the last"
        rf" ack, {NUMBER} with the work after it, (met|NOT met)$",
        out,
        re.MULTILINE,
    )


def test_json_output_without_baseline_or_half_load_with_a_re_send(tmp_path: Path) -> None:
    log = tmp_path / "meterd.log"
    result = CliRunner().invoke(
        bench,
        [
            "ingest",
            "--spawn",
            "--events",
            "2000",
            "--accounts",
            "100",
            "--batch",
            "100",
            "--connections",
            "2",
            "--no-baseline",
            "--no-half-load",
            "--resend",
            "--set",
            "ingest.window=7",  # a setting of the spawned daemon's config: hello says so
            "--keep-log",
            str(log),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "token" not in report["options"]
    (target,) = report["targets"]
    assert target["name"] == "meterd"
    top = target["max"]
    assert top["events"] == top["sent_events"] == top["accepted"] == 2000
    assert top["error"] is None
    assert top["in_flight"] == 7
    for key in ("rate", "latency_p50_ms", "latency_p99_ms", "server_cpu_share", "server_rss_peak"):
        assert isinstance(top[key], int | float), key
    # The CPU after the last ack (until the daemon went idle) counts on top of the row's.
    assert top["after_ack_seconds"] >= 0  # busy after the last ack (0: idle at once)
    assert top["after_ack_cpu_seconds"] >= 0
    assert top["total_cpu_per_event_us"] == pytest.approx(
        (top["server_cpu_seconds"] + top["after_ack_cpu_seconds"]) / 2000 * 1e6
    )
    if not _on_tmpfs(Path(tempfile.gettempdir())):  # the spawned daemon's store is there
        # Every acked event is in the journal: something reached storage during the row.
        assert top["server_write_bytes"] > 0
        assert top["server_write_per_event_kib"] == top["server_write_bytes"] / 2000 / 1024
    assert target["half_load"] is None
    again = target["resend"]  # the same events again: every one a duplicate
    assert (again["events"], again["accepted"], again["duplicates"]) == (2000, 0, 2000)
    assert again["total_cpu_per_event_us"] >= again["server_cpu_per_event_us"] > 0
    assert target["stop_status"] == 0
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "meterd_started" in events
    assert "meterd_stopped" in events


def _on_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a memory file system (its writes never reach storage)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind in ("tmpfs", "ramfs")


def test_write_bytes_counts_what_a_process_writes_to_storage(tmp_path: Path) -> None:
    if _on_tmpfs(tmp_path):
        pytest.skip("tmp_path is on a memory file system")
    before = write_bytes(os.getpid())
    assert before is not None
    with open(tmp_path / "data", "wb") as file:
        file.write(b"x" * (1 << 20))
        file.flush()
        os.fsync(file.fileno())
    after = write_bytes(os.getpid())
    assert after is not None
    assert after - before >= 1 << 20
    assert write_bytes(2**22 + 12345) is None  # no such process


def test_neither_spawn_nor_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(bench, ["ingest", "--quick"])
    assert result.exit_code != 0
    assert "--spawn or --url" in result.output


def test_the_load_is_encoded_up_front_round_robin_with_per_connection_seqs() -> None:
    import msgpack  # type: ignore[import-untyped]

    load = build_load(1050, 10, 2, 100, seed=3, prefix="t")
    assert load.events == 1050
    assert [len(frames) for frames in load.frames] == [6, 5]
    assert load.sizes[0][-1] == 50  # the last, short batch went to connection 0
    frames = [[msgpack.unpackb(frame) for frame in lane] for lane in load.frames]
    for lane in frames:
        assert [frame["seq"] for frame in lane] == list(range(len(lane)))
    ids = [event["id"] for lane in frames for frame in lane for event in frame["events"]]
    assert len(set(ids)) == 1050
    warm = build_load(0, 10, 2, 4, every_account_once=True)
    accounts = [
        event["account"]
        for lane in warm.frames
        for frame in lane
        for event in msgpack.unpackb(frame)["events"]
    ]
    assert sorted(accounts) == [f"acct-{n:05d}" for n in range(10)]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([3.0, 1.0, 2.0], 50, 2.0), ([1.0] * 99 + [9.0], 99, 1.0)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_quick_sizes() -> None:
    quick = BenchOptions.quick(spawn=True)
    assert (quick.events, quick.accounts, quick.connections, quick.batch) == (20_000, 1_000, 4, 500)


def test_a_failed_max_run_is_reported_not_raised() -> None:
    def result(label: str, events: int, error: str | None) -> RunResult:
        return RunResult(
            label=label,
            events=events,
            sent_events=10_000,
            accepted=events,
            duplicates=0,
            rejected=0,
            seconds=2.0,
            latency_p50_ms=10.0,
            latency_p99_ms=20.0,
            latency_max_ms=30.0,
            batches=events // 500,
            in_flight=64,
            server_cpu_seconds=1.0,
            error=error,
        )

    meterd = TargetReport("meterd", "ws://x/v1/ingest", 1, max=result("max", 2_500, "unavailable"))
    meterd.half_skipped = "the max run failed"
    baseline = TargetReport("baseline", "ws://y/v1/ingest", 2, max=result("max", 10_000, None))
    baseline.half = result("half load", 10_000, None)
    text = format_report(Report(BenchOptions.quick(spawn=True), 2, [meterd, baseline]))
    assert re.search(r"^\| max: events acked of sent\s*\|\s*FAILED at 25% \|\s*all \|", text, re.M)
    assert re.search(r"^\| half load: events acked of sent\s*\|\s*skipped \|\s*all \|", text, re.M)
    assert re.search(
        r"^\| half load: ack latency p99, ms\s*\|\s*— \|\s*20\.0 \|\s*— \|", text, re.M
    )
    assert "FAILED: unavailable" in text
    assert "not measured, NOT met" in text
    assert "CPU <= 25 µs per event, all processes, max row: not measured, NOT met (the max" in text

    # A fixed --half-load-rate is not the goal's load: the goal is not judged on it.
    meterd.half_skipped = None
    meterd.half = result("half load", 10_000, None)
    options = BenchOptions.quick(spawn=True, half_load_rate=1234.0)
    text = format_report(Report(options, 2, [meterd]))
    assert "not measured (the row offered --half-load-rate 1,234 events/s" in text
    (latency,) = [line for line in text.splitlines() if "ack latency p99 < 50 ms" in line]
    assert not re.search(r"\b(NOT )?met\b", latency.replace("not measured", ""))
    # The CPU goal is judged on the max row (failed here), whatever the half-load row offered.
    assert "CPU <= 25 µs per event, all processes, max row: not measured, NOT met" in text


def test_the_delivery_bench_runs_small_and_counts_every_event_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m meterd.bench.deliver`` on a small load: it prints its figures, and its
    own check passed (the actors' windows equal the floor's, the budget is back to zero:
    a lost or doubled delivery raises there)."""
    from meterd.bench.deliver import main

    threshold = gc.get_threshold()
    try:  # the bench sets the daemon's collector thresholds: not for the other tests
        main(["--accounts", "30", "--batch", "40", "--batches", "6", "--repeats", "2"])
    finally:
        gc.set_threshold(*threshold)
    out = capsys.readouterr().out
    for label in ("actors (callbacks + drain)", "commit callbacks", "actors draining", "floor"):
        assert re.search(rf"{re.escape(label)}[^\n]*?{NUMBER}", out), (label, out)
