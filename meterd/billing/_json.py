"""JSON of billing's large documents, made and read a slice at a time.

An invoice of 50,000 lines is ~14 MiB of JSON. Billing builds it on a worker thread, but
CPython hands the interpreter to another thread only between bytecodes: one ``json.dumps``
or ``json.loads`` of it is a single C call of 0.2-0.3 s during which the Trio thread (acks,
``/healthz``) cannot run at all. So long lists are encoded :data:`SLICE` items at a time
(:func:`encode_json`), optionally converted to JSON values only slice by slice too
(:class:`Slices`: the 50,000 line dictionaries never exist at once, which also keeps the
garbage collector's work small), and stored arrays are read back element by element
(:func:`loads_array`). The text is exactly what one ``json.dumps`` with the same options
gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

__all__ = ["SLICE", "Slices", "encode_json", "loads_array"]

T = TypeVar("T")

SLICE: Final = 500
"""List items encoded by one ``json.dumps`` (~2 ms of invoice lines)."""
_DEPTH: Final = 6  # how deep long lists are looked for (GraphQL: data.account.invoice.lines)
_FEW: Final = 16  # a list this short is looked into (restatements, each with its changes)


@dataclass(frozen=True, slots=True)
class Slices(Generic[T]):
    """A long list in a document for :func:`encode_json`: ``items``, each converted to its
    JSON value by ``convert`` only when its slice is encoded."""

    items: Sequence[T]
    convert: Callable[[T], Any]

    def values(self) -> list[Any]:
        return [self.convert(item) for item in self.items]


def encode_json(
    document: Any,
    *,
    ensure_ascii: bool = False,
    separators: tuple[str, str] = (",", ":"),
) -> str:
    """``json.dumps(document, ensure_ascii=..., allow_nan=False, separators=...)`` made in
    slices: every :class:`Slices` and every list longer than :data:`SLICE` (in objects and
    short lists, a few levels deep) is encoded :data:`SLICE` items at a time."""

    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=False, separators=separators)

    item_sep, key_sep = separators
    out: list[str] = []

    def sliced(items: Sequence[Any], convert: Callable[[Any], Any] | None) -> None:
        out.append("[")
        for start in range(0, len(items), SLICE):
            part = items[start : start + SLICE]
            if start:
                out.append(item_sep)
            out.append(dumps(part if convert is None else [convert(x) for x in part])[1:-1])
        out.append("]")

    def encode(value: Any, depth: int) -> None:
        if isinstance(value, Slices):
            sliced(value.items, value.convert)
        elif depth and isinstance(value, list) and len(value) > SLICE:
            sliced(value, None)
        elif depth and isinstance(value, list) and len(value) <= _FEW:
            out.append("[")
            for index, item in enumerate(value):
                if index:
                    out.append(item_sep)
                encode(item, depth - 1)
            out.append("]")
        elif depth and isinstance(value, dict) and all(isinstance(key, str) for key in value):
            out.append("{")
            for index, (key, item) in enumerate(value.items()):
                out.append((item_sep if index else "") + dumps(key) + key_sep)
                encode(item, depth - 1)
            out.append("}")
        else:
            out.append(dumps(value))

    encode(document, _DEPTH)
    return "".join(out)


_WHITESPACE: Final = " \t\n\r"
_decoder = json.JSONDecoder()


def loads_array(text: str) -> list[Any]:
    """``json.loads(text)`` for a JSON array, one element per C call (the elements of a
    stored invoice are its lines). ``ValueError`` when ``text`` is not one JSON array."""
    index = _skip(text, 0)
    if not text.startswith("[", index):
        raise ValueError(f"expected a JSON array, got {text[:40]!r}")
    index = _skip(text, index + 1)
    out: list[Any] = []
    if text.startswith("]", index):
        index += 1
    else:
        while True:
            value, index = _decoder.raw_decode(text, index)
            out.append(value)
            index = _skip(text, index)
            if text.startswith(",", index):
                index = _skip(text, index + 1)
            elif text.startswith("]", index):
                index += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at {index} in a JSON array")
    if _skip(text, index) != len(text):
        raise ValueError(f"extra data after a JSON array at {index}")
    return out


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index
