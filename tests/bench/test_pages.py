"""``python -m meterd.bench.pages`` runs and prints every part (figures are never asserted
as targets; only what must hold whatever the machine)."""

from __future__ import annotations

import re
import subprocess
import sys

from meterd.bench.pages import PARTS, pages_per_event

NUMBER = r"[0-9]+\.[0-9]+"
SMALL = {"accounts": 200, "group": 50, "groups": 8, "cells_per_checkpoint": 5}


def test_the_bench_prints_every_part() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.pages", "--accounts", "200", "--group", "50",
         "--groups", "6"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    for part in PARTS:
        assert re.search(rf"^\| {part} \| {NUMBER} \| {NUMBER} \|$", ran.stdout, re.M), ran.stdout


def test_every_committed_row_costs_pages_and_the_parts_add_up() -> None:
    pages = {part: pages_per_event(part, **SMALL) for part in PARTS}
    # A commit that inserts rows writes at least the pages they landed on.
    assert all(value > 0 for value in pages.values()), pages
    # The parts write to different tables, so together they write about the sum of what
    # each writes alone (not exactly: the random accounts and keys differ between runs).
    parts = pages["journal"] + pages["dedupe"] + pages["windows"]
    assert 0.8 * parts <= pages["all"] <= 1.2 * parts, pages
