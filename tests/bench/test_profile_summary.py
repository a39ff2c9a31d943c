"""The bench's py-spy summary (meterd.bench.ingest.summarize_profile)."""

from __future__ import annotations

from pathlib import Path

from meterd.bench.ingest import summarize_profile


def test_a_profile_with_bytes_that_are_not_utf8_is_summarized(tmp_path: Path) -> None:
    raw = tmp_path / "prof.raw"
    raw.write_bytes(
        b"main (/x/meterd/app.py:1);work (/x/meterd/store/_writer.py:9) 3\n"
        b"main (/x/meterd/app.py:1);thread \xf5name (threading.py:1) 1\n"
    )
    summary = summarize_profile(raw)
    assert summary.startswith("4 samples; self:")
    assert "75.0%  work (meterd/store/_writer.py)" in summary
