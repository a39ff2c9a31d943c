"""docs/config.md's table of keys is what the declarations generate (meterd.config.reference)."""

from __future__ import annotations

from meterd.config import reference
from meterd.schema import reference as rows_of


def test_the_docs_hold_the_generated_reference() -> None:
    text = reference.DOC.read_text(encoding="utf-8")
    assert reference.generated_part(text) == reference.markdown(), (
        "docs/config.md is out of date: run python -m meterd.config.reference --write"
    )


def test_every_key_has_a_meaning() -> None:
    rows = [row for _, _, cls in reference.TABLES for row in rows_of(cls, "")]
    assert len(rows) > 40
    assert all(row.meaning.endswith(".") for row in rows), [r.key for r in rows]
