"""``python -m meterd.bench.writer`` runs and prints every figure (never asserts a value)."""

from __future__ import annotations

import re
import subprocess
import sys

from meterd.bench.writer import build_batches

NUMBER = r"[0-9]+\.[0-9]{2}"


def test_the_batches_have_the_issues_shape() -> None:
    warm_up, timed = build_batches(3, 500, 10_000, seed=7)
    assert sum(len(events) for groups in warm_up for _, events in groups) == 10_000
    for groups in timed:
        accounts = [account for account, _ in groups]
        assert len(set(accounts)) == len(accounts)  # grouped by account, each once
        assert sum(len(events) for _, events in groups) == 500
        assert 450 < len(groups) < 500  # ~488 one-event groups over 10,000 accounts
        for account, events in groups:
            assert all(event.account == account for event in events)
    ids = [e.id for groups in warm_up + timed for _, events in groups for e in events]
    assert len(set(ids)) == len(ids)


def test_the_bench_prints_the_writer_the_reference_and_the_naive_peer() -> None:
    # A subprocess, as it is run: the bench sets the process's logging and collector.
    small = ["--batches", "4", "--batch", "50", "--accounts", "200", "--repeats", "1"]
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.writer", *small, "--against", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # HEAD: the committed code, always there
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    assert re.search(r"\| figure \| this code \| writer @ HEAD \| naive peer \|", out), out
    figures = (
        "process CPU µs/event",
        "CPU outside SQLite µs/event",
        "submit_batch µs/event",
        "wall µs/event",
        "storage writes KiB/event",
    )
    for figure in figures:
        assert re.search(rf"^\| {figure} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", out, re.M), out
    assert re.search(rf"^process CPU: HEAD / this code = {NUMBER}x$", out, re.M), out
    assert re.search(rf"^CPU outside SQLite: HEAD / this code = {NUMBER}x$", out, re.M), out
