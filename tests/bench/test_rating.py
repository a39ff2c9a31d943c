"""``meterd bench rating`` runs end to end and prints every figure (never checks a value:
a benchmark is not a timed test)."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from meterd.cli.bench import bench


def test_a_small_rating_bench_prints_every_row() -> None:
    result = CliRunner().invoke(
        bench,
        ["rating", "--sizes", "200,400", "--repeats", "1", "--seconds", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for lines in ("200", "400"):
        assert re.search(rf"^\s+{lines}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+$", out, re.M), out
    baseline = re.search(r"^baseline \(no invoice request\)\s+20\s.*\s+-$", out, re.M)
    assert baseline, out
    assert re.search(r"^while rating the 400-line invoice\s+20\s.*[0-9]+ x [0-9.]+ s$", out, re.M)
    assert "meterd stopped with status 0" in out


def test_json_output_and_bad_sizes() -> None:
    result = CliRunner().invoke(
        bench,
        ["rating", "--sizes", "50", "--repeats", "1", "--seconds", "0.5", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [row] = report["rating"]
    assert (row["lines"], len(row["seconds"])) == (50, 1)
    assert [r["label"] for r in report["latency"]] == [
        "baseline (no invoice request)",
        "while rating the 50-line invoice",
    ]
    assert all(len(r["acks"]) == 10 and r["missing"] == 0 for r in report["latency"])
    bad = CliRunner().invoke(bench, ["rating", "--sizes", "5,x"])
    assert bad.exit_code == 2
    assert "--sizes" in bad.output
