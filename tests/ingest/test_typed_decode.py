"""The typed batch decoder (meterd.ingest.typed) gives exactly the old path's verdicts.

The old path, the reference: ``decode_frame`` (msgpack), ``parse_batch``, then
``EventValidator.validate_batch`` (whose every verdict is ``validate_precise``'s,
tests/ingest/test_validate.py). The new one: ``BatchReader.read`` (msgspec Structs, checks
in C) then ``ReadBatch.validate``. For any frame — well-formed or not, down to its bytes
(duplicate keys, ``bin`` for ``str``, strings that are not UTF-8, trailing bytes) — both
must give the same fault (code and message), or the same ``seq``, size, groups of the same
:class:`Event` objects and the same rejections; a rejected event's ``raw`` is the event as
msgpack decodes it (the audit record is made from it).
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from meterd.config import Producer
from meterd.ingest.protocol import Fault, decode_frame, parse_batch
from meterd.ingest.typed import BatchReader
from meterd.ingest.validate import EventValidator
from meterd.model import MINUTE_MS
from tests.examples import examples
from tests.ingest.test_validate import (
    _LOW,
    _ODD_PROPERTY_MAPS,
    ALL,
    LATE,
    METERS,
    NOW,
    ROUTER,
    _any_field,
    _batches,
    _events,
    _good,
    _msgpack_values,
    _one_field_off,
    _same_verdict,
    _validators,
    event,
)

MAX_BATCH = 12
_HIGH = NOW + 5 * MINUTE_MS
NOBODY = EventValidator(METERS, Producer("nobody", "t3", frozenset()), LATE)  # writes nothing
_packer = msgpack.Packer(use_bin_type=True)
_old_packer = msgpack.Packer(use_bin_type=False)  # bytes become msgpack str (maybe not UTF-8)

Outcome = tuple[Any, ...]


def _old(message: Any, last_seq: int, validator: EventValidator) -> Outcome:
    try:
        seq, raws = parse_batch(decode_frame(message), last_seq, MAX_BATCH)
    except Fault as fault:
        return ("fault", fault.code, fault.message)
    groups, rejected = validator.validate_batch(raws, NOW)
    return ("batch", seq, len(raws), groups, rejected, [_shown(raws[r.index]) for r in rejected])


def _new(message: Any, last_seq: int, validator: EventValidator) -> Outcome:
    reader = BatchReader(validator, MAX_BATCH)
    try:
        batch = reader.read(message, last_seq)
    except Fault as fault:
        return ("fault", fault.code, fault.message)
    groups, rejected = batch.validate(NOW)
    global _last_typed
    _last_typed = batch.typed
    return (
        "batch",
        batch.seq,
        batch.size,
        groups,
        rejected,
        [_shown(batch.raw(r.index)) for r in rejected],
    )


def _shown(raw: object) -> str:
    """A rejected event as sent, for comparing: a map's keys in any order, nil properties
    as none (a batch msgspec decoded comes back as its maps: they differ only so)."""
    if not isinstance(raw, dict):
        return repr(raw)
    items = [(repr(k), v) for k, v in raw.items() if not (k == "properties" and v is None)]
    return repr(sorted(items, key=lambda item: item[0]))


_last_typed = False  # whether the typed path decided the last batch _new read


def _same(message: Any, validator: EventValidator, last_seq: int = -1) -> Outcome:
    """Both paths' outcome for ``message``, asserted equal (events in the same form)."""
    old = _old(message, last_seq, validator)
    new = _new(message, last_seq, validator)
    assert new[0] == old[0], (new, old)
    assert new == old
    if new[0] == "batch":
        for account, (_, events) in new[3].items():
            for typed, reference in zip(events, old[3][account][1], strict=True):
                _same_verdict(typed, reference)
    return new


# ---- frames, down to their bytes ---------------------------------------------------------------


def _map(pairs: list[tuple[Any, Any]], packer: msgpack.Packer = _packer) -> bytes:
    """A msgpack map of ``pairs`` as given: keys may repeat (a dict cannot say that)."""
    data: bytes = packer.pack_map_header(len(pairs)) + b"".join(
        _pack(key, packer) + (value if isinstance(value, _Raw) else _pack(value, packer))
        for key, value in pairs
    )
    return data


def _pack(value: Any, packer: msgpack.Packer = _packer) -> bytes:
    """``value`` packed; integers msgpack cannot hold are clamped to its range."""
    data: bytes = packer.pack(_clamped(value))
    return data


def _clamped(value: Any) -> Any:
    if type(value) is int:
        return min(max(value, -(2**63)), 2**64 - 1)
    if isinstance(value, list):
        return [_clamped(item) for item in value]
    if isinstance(value, dict):
        return {_clamped(key): _clamped(item) for key, item in value.items()}
    return value


class _Raw(bytes):
    """Bytes that :func:`_map` puts in as they are (an already encoded value)."""


@st.composite
def _event_bytes(draw: st.DrawFn, raw: Any) -> _Raw:
    """``raw`` encoded: as is, or (a map) with its keys shuffled, a key repeated with another
    value, or its strings as msgpack ``str`` whatever they hold."""
    packer = draw(st.sampled_from([_packer, _packer, _old_packer]))
    if not isinstance(raw, dict):
        return _Raw(_pack(raw, packer))
    pairs = list(raw.items())
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    repeat: bool = draw(st.booleans())
    if pairs and repeat:
        key = draw(st.sampled_from([key for key, _ in pairs]))
        value = draw(_any_field.get(key, _msgpack_values) if isinstance(key, str) else st.none())
        pairs.insert(draw(st.integers(0, len(pairs))), (key, value))
    return _Raw(_map(pairs, packer))


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """A batch frame: mostly a good envelope around good or odd events; sometimes an odd
    envelope (a key missing, repeated, unknown or of the wrong type, too many events, a seq
    not above the last), sometimes bytes after it or cut short."""
    events = draw(
        _batches()
        | st.lists(_events | _good | _one_field_off | _msgpack_values, min_size=1, max_size=4)
    )
    encoded = [draw(_event_bytes(raw)) for raw in events]
    pairs: list[tuple[Any, Any]] = [
        ("type", "batch"),
        ("seq", draw(st.sampled_from([0, 3, 7]))),
        ("events", _Raw(_packer.pack_array_header(len(encoded)) + b"".join(encoded))),
    ]
    change = draw(st.integers(0, 9))
    if change == 1:  # a field changed or dropped
        index = draw(st.integers(0, 2))
        replacement = draw(
            st.sampled_from(["batch", "ack", None, -1, 2, True, 1.5, b"batch", [], {}])
            | _msgpack_values
        )
        pairs[index] = (pairs[index][0], replacement)
        if draw(st.booleans()):
            del pairs[index]
    elif change == 2:  # a key repeated (msgpack: the last one counts) or an unknown one
        key = draw(st.sampled_from(["type", "seq", "events", "extra", "Events"]))
        value = draw(st.sampled_from(["batch", 5, 1, [], [event()]]) | _msgpack_values)
        pairs.insert(draw(st.integers(0, 3)), (key, value))
    elif change == 3:  # too many events
        pairs[2] = ("events", [event(id=f"e{n}") for n in range(MAX_BATCH + 1)])
    elif change == 4:  # a non-string key
        pairs.append((draw(st.sampled_from([1, b"events", None])), 1))
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    message = _map(pairs)
    tail = draw(st.integers(0, 12))
    if tail == 1:
        message += draw(st.binary(min_size=1, max_size=3))
    elif tail == 2:
        message = message[: draw(st.integers(0, len(message) - 1))]
    return message


_any_validator = _validators | st.just(NOBODY)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=_frames(), validator=_validators | st.just(NOBODY), last_seq=st.sampled_from([-1, 3])
)
def test_typed_decoding_gives_the_old_paths_verdicts(
    message: bytes, validator: EventValidator, last_seq: int
) -> None:
    _same(message, validator, last_seq)
    note(f"typed path: {'accepted' if _last_typed else 'left to the old one'}")


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=_frames(), validator=_validators | st.just(NOBODY), last_seq=st.sampled_from([-1, 3])
)
def test_typed_decoding_gives_the_old_paths_verdicts_long(
    message: bytes, validator: EventValidator, last_seq: int
) -> None:
    _same(message, validator, last_seq)
    note(f"typed path: {'accepted' if _last_typed else 'left to the old one'}")


@settings(max_examples=examples(100), deadline=None)
@given(raws=_batches(), validator=_validators)
def test_well_formed_batches_get_the_same_events(
    raws: list[Any], validator: EventValidator
) -> None:
    _same(_pack({"type": "batch", "seq": 0, "events": raws}), validator)
    note(f"typed path: {'accepted' if _last_typed else 'left to the old one'}")


# ---- cases named one by one --------------------------------------------------------------------


def _frame(events: list[Any], **envelope: Any) -> bytes:
    return _pack({"type": "batch", "seq": 0, "events": events, **envelope})


def _envelope(events: bytes, count: int) -> bytes:
    return _map(
        [("type", "batch"), ("seq", 0), ("events", _Raw(_packer.pack_array_header(count) + events))]
    )


_GOOD = event(properties={"size": "std-1x"})
_CASES: dict[str, Any] = {
    "a text frame": "not bytes",
    "an array": _packer.pack([1, 2]),
    "trailing bytes": _frame([_GOOD]) + b"\x00",
    "cut short": _frame([_GOOD])[:-3],
    "empty": b"",
    "no events": _frame([]),
    "too many events": _frame([event(id=f"e{n}") for n in range(MAX_BATCH + 1)]),
    "max events": _frame([event(id=f"e{n}") for n in range(MAX_BATCH)]),
    "an unknown envelope key": _frame([_GOOD], extra={"a": [1, 2]}),
    "an unknown envelope key holding bad UTF-8": _map(
        [("type", "batch"), ("seq", 0), ("events", [_GOOD]), ("x", _Raw(b"\xa2\xff\xfe"))]
    ),
    "an unknown envelope key holding a bad timestamp": _map(
        [("type", "batch"), ("seq", 0), ("events", [_GOOD]), ("x", _Raw(b"\xd5\xff\x00\x00"))]
    ),
    "seq repeated, the last counts": _map(
        [("type", "batch"), ("seq", 0), ("events", [_GOOD]), ("seq", -1)]
    ),
    "events repeated, the last counts": _map(
        [("type", "batch"), ("seq", 0), ("events", [_GOOD]), ("events", [{"id": 1}])]
    ),
    "seq a bool": _frame([_GOOD], seq=True),
    "seq a float": _frame([_GOOD], seq=1.0),
    "type as bin": _frame([_GOOD], type=b"batch"),
    "an event's key repeated, the last counts": _envelope(_map([*_GOOD.items(), ("id", "")]), 1),
    "an event's key repeated, the last is good": _envelope(_map([("id", ""), *_GOOD.items()]), 1),
    "a property repeated": _envelope(
        _map([*event().items(), ("properties", _Raw(_map([("a", "1"), ("a", 2)])))]), 1
    ),
    "17 properties, one repeated": _envelope(
        _map(
            [
                *event().items(),
                ("properties", _Raw(_map([(f"k{n % 16}", "v") for n in range(17)]))),
            ]
        ),
        1,
    ),
    "an id that is not UTF-8": _envelope(
        _map([*event().items(), ("id", _Raw(b"\xa2\xff\xfe"))]), 1
    ),
    "an id that is a surrogate": _envelope(
        _map([*event().items(), ("id", _Raw(b"\xa3\xed\xa0\x80"))]), 1
    ),
    "an id as bin": _frame([event(id=b"e1")]),
    "a timestamp time": _frame([event(time=msgpack.Timestamp(NOW // 1000))]),
    "an ext quantity": _frame([event(quantity=msgpack.ExtType(1, b"1"))]),
    "a float time": _frame([event(time=float(NOW))]),
    "a bool quantity": _frame([event(quantity=True)]),
    "a nil quantity": _frame([event(quantity=None)]),
    "uint64 quantities": _frame([event(quantity=2**64 - 1), event(id="e2", quantity=0)]),
    "negative quantity": _frame([event(quantity=-1)]),
    "decimal zeros": _frame([event(quantity="0.000"), event(id="e2", quantity="0")]),
    "a 40-digit quantity": _frame([event(quantity="1" * 40)]),
    "a 41-digit quantity": _frame([event(quantity="1" * 41)]),
    "an exponent": _frame([event(quantity="1E3")]),
    "'5.' and '.5'": _frame([event(quantity="5."), event(id="e2", quantity=".5")]),
    "'.'": _frame([event(quantity=".")]),
    "an Arabic-Indic digit": _frame([event(quantity="\u0663")]),
    "a newline in a quantity": _frame([event(quantity="1\n2")]),
    "a newline after an account": _frame([event(account="acme\n")]),
    "an account of 129": _frame([event(account="a" * 129)]),
    "an id of 200 emoji": _frame([event(id="\U0001f600" * 200)]),
    "an id of 201 emoji": _frame([event(id="\U0001f600" * 201)]),
    "time at both ends": _frame([event(time=_LOW), event(id="e2", time=_HIGH)]),
    "time past both ends": _frame([event(time=_LOW - 1), event(id="e2", time=_HIGH + 1)]),
    "time past the end": _frame([event(time=_HIGH), event(id="e2", time=_HIGH + 1)]),
    "time before the start": _frame([event(time=_LOW), event(id="e2", time=_LOW - 1)]),
    "an account with a space": _frame([event(), event(id="e2", account="a b")]),
    "int and decimal quantities": _frame([event(quantity=5), event(id="e2", quantity="2.5")]),
    "count and sum meters": _frame(
        [
            {k: v for k, v in event(meter="router.requests").items() if k != "quantity"},
            event(id="e2", quantity="2.5"),
            event(id="e3", meter="router.requests", quantity="garbage"),
            event(id="e4", meter="postgres.bytes", quantity=7),
        ]
    ),
    "a count meter with a float quantity": _frame([event(meter="router.requests", quantity=1.5)]),
    "a sum meter without quantity": _frame([{k: v for k, v in event().items() if k != "quantity"}]),
    "nil, empty and full properties": _frame(
        [
            event(properties=None),
            event(id="e2", properties={}),
            event(id="e3", properties={"size": "a", "app": "b"}),
            event(id="e4"),
        ]
    ),
    "odd property maps": _frame(
        [event(id=f"e{n}", properties=value) for n, value in enumerate(_ODD_PROPERTY_MAPS)]
    ),
    "an unknown meter": _frame([event(meter="dyno.second")]),
    "the same account twice": _frame([event(), event(id="e2"), event(id="e3", account="b")]),
    "an event that is an array": _frame([list(event().values())]),
    "an unknown event key": _frame([{**event(), "Id": "x"}]),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_typed_decoding_gives_the_old_paths_verdicts_on_named_cases(case: str) -> None:
    for validator, last_seq in itertools.product((ALL, ROUTER, NOBODY), (-1, 0)):
        _same(_CASES[case], validator, last_seq)


def test_the_typed_path_takes_common_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """It must not quietly hand every batch to the old path (which would still pass the
    tests above)."""
    validator = EventValidator(METERS, Producer("platform", "t1"), LATE)

    def refused(*_: object) -> None:
        raise AssertionError("the typed path left this batch to the old one")

    monkeypatch.setattr(validator, "validate_batch", refused)
    reader = BatchReader(validator, MAX_BATCH)
    nil = {k: v for k, v in event(meter="router.requests").items() if k != "quantity"}
    for events in (
        [event(id=f"e{n}", account=f"a{n % 3}", properties={"size": "x"}) for n in range(9)],
        [event(quantity=5), event(id="e2", quantity=2**64 - 1), event(id="e3", quantity=0)],
        [event(quantity="0.000"), event(id="e2", quantity="1" * 40), event(id="e3")],
        [event(quantity="5."), event(id="e2", quantity=".5"), event(id="e3", quantity=7)],
        [nil, event(id="e2", meter="router.requests", quantity="garbage")],
        [nil, event(id="e2"), event(id="e3", meter="postgres.bytes", quantity=7)],
        [event(properties=None), event(id="e2", properties={}), event(id="e3")],
        [event(properties={"size": "a", "app": "b"}), event(id="e2", properties={"k": "v"})],
        [event(time=_LOW), event(id="e2", time=_HIGH), event(id="e3", account="A.b_c:d@e-1")],
        [event(id="\U0001f600" * 200, properties={"k" * 64: "v" * 256})],
    ):
        batch = reader.read(_frame(events), -1)
        groups, rejected = batch.validate(NOW)
        assert batch.typed
        assert rejected == []
        assert sum(len(indexes) for indexes, _ in groups.values()) == len(events)
        expected = [ALL.validate_precise(n, raw, NOW, NOW) for n, raw in enumerate(events)]
        for indexes, found in groups.values():
            for index, typed in zip(indexes, found, strict=True):
                _same_verdict(typed, expected[index])
