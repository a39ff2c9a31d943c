"""The journal's codec and the pinned file format."""

from __future__ import annotations

import decimal
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.model import Event, canonical_quantity
from meterd.store import (
    StoreError,
    Writer,
    codec,
    schema,
)
from meterd.store._appends import encode_batch
from meterd.store.errors import InvalidEvents
from tests.examples import examples
from tests.store.helpers import Collector, rows, running, store_config

# -- codec --------------------------------------------------------------------------------

_text = st.text(min_size=0, max_size=20)
_quantities = st.one_of(
    st.integers(min_value=0, max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(abs),
)
_events = st.builds(
    Event,
    id=st.text(min_size=1, max_size=50),
    account=st.just("acct"),
    meter=_text,
    quantity=_quantities,
    time=st.integers(min_value=-(2**62), max_value=2**62),
    properties=st.dictionaries(_text, _text, max_size=5).map(lambda d: tuple(sorted(d.items()))),
    producer=_text,
    received_at=st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=examples(200), deadline=None)
@given(events=st.lists(_events, max_size=8))
def test_codec_round_trips_exactly(events: list[Event]) -> None:
    payload = codec.encode_batch(events)
    decoded = codec.decode_batch(payload, "acct")
    assert decoded == events
    # In an exact context, whatever context the model's canonical_quantity relies on.
    with decimal.localcontext(decimal.Context(prec=1000)):
        for before, after in zip(events, decoded, strict=True):
            assert type(after.quantity) is type(before.quantity)
            assert after.fingerprint() == before.fingerprint()
    assert codec.encode_batch(decoded) == payload  # canonical: one encoding per value
    assert codec.batch_event_ids(payload) == [e.id for e in events]


@settings(max_examples=examples(300), deadline=None)
@given(event=_events)
def test_the_writers_row_and_fingerprint_are_the_events(event: Event) -> None:
    """The writer canonicalizes a quantity once for both the row and the fingerprint; the
    fingerprint is part of the file format (dedupe rows), so it must be the event's own."""
    row, fingerprint = codec.event_row_and_fingerprint(event)
    assert row == codec.event_row(event)
    assert fingerprint == event.fingerprint()


# Computed by the code before the writer's batch encoding (main at e153b9f): payloads,
# fingerprints and dedupe keys are the file format, so existing databases must read back
# and dedupe against new events byte for byte.
_PINNED_EVENTS = [
    Event(
        "ev-1", "acct-00042", "dyno.seconds", Decimal("12.340"), 1_764_000_000_123,
        (("app", "app-3"), ("size", "std-1x")), "prod-a", 1_764_000_001_000,
    ),
    Event("ev-2", "acct-00042", "api.calls", 7, 1_764_000_000_000, (), "prod-a", 1_764_000_001_000),
    Event(
        "ev-\u00e9", "acct-00042", "dyno.seconds", Decimal("-0.000"), -5, (("k", "v\x1fw"),),
        "", 0,
    ),
    Event("big", "acct-00042", "bytes", 2**70, 0, (), "p", 1),
    Event("tiny", "acct-00042", "m", Decimal("1E-9"), 1, (), "p", 1),
    Event("exp", "acct-00042", "m", Decimal("25E+3"), 1, (), "p", 1),
]  # fmt: skip
_PINNED_PAYLOAD = bytes.fromhex(
    "9697a465762d31ac64796e6f2e7365636f6e6473a531322e3334cf0000019ab697e87b82a3617070a561"
    "70702d33a473697a65a67374642d3178a670726f642d61cf0000019ab697ebe897a465762d32a9617069"
    "2e63616c6c7307cf0000019ab697e80080a670726f642d61cf0000019ab697ebe897a565762dc3a9ac64"
    "796e6f2e7365636f6e6473a130fb81a16ba3761f77a00097a3626967a56279746573c716013131383035"
    "39313632303731373431313330333432340080a1700197a474696e79a16dab302e303030303030303031"
    "0180a1700197a3657870a16da532353030300180a17001"
)
_PINNED_BUCKET = 1595988406716858368
_PINNED_FINGERPRINTS = [
    7874279323538004777, 837176367054285263, 2381469792914871566,
    4412510135373989636, 2439201710981775368, 8007854286911018567,
]  # fmt: skip
_PINNED_KEYS = [
    1595988970220224064, 1595988746520946348, 1595988550815057645,
    1595988642559890600, 1595989313327156081, 1595989136201725116,
]  # fmt: skip


def test_the_file_format_is_pinned() -> None:
    """Payload bytes, fingerprints and dedupe keys as the code before the batch encoding
    wrote them, through every path the writer and the store use."""
    events = _PINNED_EVENTS
    assert codec.encode_batch(events) == _PINNED_PAYLOAD
    packed, fingerprints = codec.encode_rows(events)
    assert codec.pack_batch(packed) == _PINNED_PAYLOAD
    assert fingerprints == _PINNED_FINGERPRINTS
    assert [event.fingerprint() for event in events] == _PINNED_FINGERPRINTS
    assert schema.account_bucket("acct-00042") == _PINNED_BUCKET
    buckets = {"acct-00042": _PINNED_BUCKET}
    assert schema.dedupe_row_keys(buckets, events) == _PINNED_KEYS
    assert [schema.dedupe_row_key(_PINNED_BUCKET, event) for event in events] == _PINNED_KEYS
    assert codec.decode_batch(_PINNED_PAYLOAD, "acct-00042") == events  # Decimals by value


async def test_the_writer_stores_the_pinned_format(tmp_path: Path) -> None:
    """What the writer commits for one-event and several-event groups: the pinned payload
    (split by group), fingerprints and keys."""
    path = tmp_path / "s.sqlite3"
    events = _PINNED_EVENTS
    async with running(Writer(path, store_config())) as writer:
        done = Collector()
        writer.submit_batch([("acct-00042", events[:1])], done)
        await writer.barrier()
        writer.submit_batch([("acct-00042", events[1:])], done)
        await writer.barrier()
    assert [type(outcome) for outcome in done.outcomes] == [list, list]
    [(first,), (rest,)] = rows(path, "SELECT payload FROM event_batches ORDER BY batch_id")
    assert first == codec.pack_batch([codec.encode_event(events[0])])
    assert b"\x96" + first[1:] + rest[1:] == _PINNED_PAYLOAD
    stored = rows(path, "SELECT key, batch_id, fingerprint FROM dedupe ORDER BY fingerprint")
    want = sorted(
        zip(_PINNED_KEYS, [1, 2, 2, 2, 2, 2], _PINNED_FINGERPRINTS, strict=True),
        key=lambda row: row[2],
    )
    assert stored == want


_any_quantities = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.decimals(min_value=-1, max_value=1, places=9),
    st.sampled_from([Decimal("-0"), Decimal("0E-9"), Decimal("-0.000"), Decimal("1E+3")]),
    st.floats(allow_nan=False),  # refused: usage is exact
    st.booleans(),  # refused: not an int quantity
)
_any_events = st.builds(
    Event,
    id=st.text(min_size=1, max_size=20),
    account=st.sampled_from(["acct", "other"]),
    meter=_text,
    quantity=_any_quantities,
    time=st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.just(True)),
    properties=st.one_of(  # sorted unique keys (valid), or any keys (maybe twice: refused)
        st.dictionaries(_text, _text, max_size=4).map(lambda d: tuple(sorted(d.items()))),
        st.lists(st.tuples(st.sampled_from("abc"), _text), max_size=3).map(tuple),
    ),
    producer=_text,
    received_at=st.integers(min_value=0, max_value=2**62),
)


def _row_and_fingerprint(event: Event) -> tuple[bytes, int] | type[Exception]:
    """The reference: the per-event encoding the writer used before ``encode_rows``."""
    try:
        return codec.pack_rows([codec.event_row(event)])[1:], event.fingerprint()
    except (TypeError, ValueError, ArithmeticError) as exc:
        return type(exc)


@settings(max_examples=examples(500), deadline=None)
@given(events=st.lists(_any_events, max_size=6))
def test_batch_encoding_agrees_with_the_per_event_encoding(events: list[Event]) -> None:
    """``encode_rows`` (the writer's hot path) gives each event's packed row and fingerprint
    exactly, and refuses exactly what the per-event functions refuse."""
    want = [_row_and_fingerprint(event) for event in events]
    for event, expected in zip(events, want, strict=True):
        if isinstance(expected, tuple):
            packed, fingerprints = codec.encode_rows([event])
            assert (packed[0], fingerprints[0]) == expected
        else:
            with pytest.raises((TypeError, ValueError, ArithmeticError)):
                codec.encode_rows([event])
    if all(isinstance(expected, tuple) for expected in want):
        packed, fingerprints = codec.encode_rows(events)
        assert list(zip(packed, fingerprints, strict=True)) == want
    else:
        with pytest.raises((TypeError, ValueError, ArithmeticError)):
            codec.encode_rows(events)


_storable_events = st.builds(  # every one stored: ints beyond 64 bits, long decimals
    Event,
    id=st.text(min_size=1, max_size=20),
    account=st.sampled_from(["acct", "other"]),
    meter=_text,
    quantity=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.decimals(allow_nan=False, allow_infinity=False, places=None),
    ),
    time=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    properties=st.dictionaries(_text, _text, max_size=4).map(lambda d: tuple(sorted(d.items()))),
    producer=_text,
    received_at=st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=examples(500), deadline=None)
@given(events=st.one_of(st.lists(_storable_events, max_size=8), st.lists(_any_events, max_size=8)))
def test_the_writers_batch_encoding_agrees_with_the_per_event_encoding(
    events: list[Event],
) -> None:
    """``encode_batch`` (one pass over a batch's groups: rows packed by msgspec, digests
    from a copied blake2b) gives each event the row bytes, fingerprint, dedupe key and
    seconds of the per-event functions, and refuses a batch exactly when one of its events
    is refused (naming its group's account)."""
    groups = [
        (account, [event for event in events if event.account == account])
        for account in dict.fromkeys(event.account for event in events)
    ]
    ordered = [event for _, group in groups for event in group]
    buckets: dict[str, int] = {}
    encoded = encode_batch(groups, buckets)
    want = [_row_and_fingerprint(event) for event in ordered]
    if not all(isinstance(expected, tuple) for expected in want):
        assert isinstance(encoded, InvalidEvents)
        return
    assert not isinstance(encoded, InvalidEvents)
    packed, fingerprints, keys, seconds = encoded
    assert list(zip(packed, fingerprints, strict=True)) == want
    assert keys == [schema.dedupe_row_key(buckets[e.account], e) for e in ordered]
    assert keys == [
        schema.account_bucket(e.account) | e.dedupe_key() & (2**40 - 1) for e in ordered
    ]
    assert seconds == [event.time // 1000 for event in ordered]


@settings(max_examples=examples(300), deadline=None)
@given(events=st.lists(_any_events, max_size=6))
def test_batch_dedupe_keys_agree_with_the_events(events: list[Event]) -> None:
    buckets = {account: schema.account_bucket(account) for account in ("acct", "other")}
    assert schema.dedupe_row_keys(buckets, events) == [
        schema.dedupe_row_key(buckets[event.account], event) for event in events
    ]


@settings(max_examples=examples(300), deadline=None)
@given(
    quantity=st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=None),
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.integers(-(10**40), 10**40),
    )
)
def test_codec_quantities_are_the_models_canonical_text(quantity: int | Decimal) -> None:
    encoded = codec.encode_quantity(quantity)
    decoded = codec.decode_quantity(encoded)
    assert decoded == quantity
    assert type(decoded) is type(quantity)
    with decimal.localcontext(decimal.Context(prec=1000)):  # the model's text, computed exactly
        if isinstance(quantity, Decimal):
            assert encoded == canonical_quantity(quantity)
        assert canonical_quantity(decoded) == canonical_quantity(quantity)


def test_codec_quantities() -> None:
    assert codec.encode_quantity(Decimal("1.50")) == "1.5"
    assert codec.encode_quantity(Decimal("1E+3")) == "1000"
    assert codec.encode_quantity(Decimal("0.1234567890123456789012345678901234567")) == (
        "0.1234567890123456789012345678901234567"  # more digits than the default context
    )
    assert codec.decode_quantity(codec.encode_quantity(2**70)) == 2**70
    with pytest.raises(TypeError, match="got float"):
        codec.encode_quantity(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode_quantity(True)
    with pytest.raises(ValueError, match="not finite"):
        codec.encode_quantity(Decimal("Infinity"))
    with pytest.raises(StoreError, match="batch 9: payload is not msgpack"):
        codec.decode_batch(b"\xc1", "a", where="batch 9")
