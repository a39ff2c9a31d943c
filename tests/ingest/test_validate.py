"""One event's checks (protocol.md §2.2-2.3) and the frame checks of §2.4, without a server."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.config import Producer
from meterd.ingest.protocol import (
    FAULT_CLOSE_CODES,
    Fault,
    ack_frame,
    decode_frame,
    error_frame,
    hello_frame,
    parse_batch,
)
from meterd.ingest.validate import (
    QUANTITY_DIGITS_MAX,
    QUANTITY_TEXT_MAX,
    REJECTION_CODES,
    EventValidator,
    Rejection,
    describe,
    written_digits,
)
from meterd.model import DAY_MS, MINUTE_MS, Aggregation, Event, Meter
from tests.examples import examples

NOW = 1_795_000_000_000
LATE = 35 * DAY_MS
METERS = {
    m.name: m
    for m in (
        Meter("router.requests", Aggregation.COUNT),
        Meter("dyno.seconds", Aggregation.SUM, ("size",)),
        Meter("postgres.bytes", Aggregation.MAX),
    )
}
ALL = EventValidator(METERS, Producer("platform", "t1"), LATE)
ROUTER = EventValidator(METERS, Producer("router", "t2", frozenset({"router.requests"})), LATE)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "e1",
        "account": "acme",
        "meter": "dyno.seconds",
        "quantity": "1.5",
        "time": NOW,
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP: Any = object()


def _with_key(key: Any) -> dict[Any, Any]:
    raw: dict[Any, Any] = event()
    raw[key] = 1
    return raw


def check(raw: Any, validator: EventValidator = ALL) -> Event | Rejection:
    return validator.validate(3, raw, NOW, NOW + 7)


def rejected(raw: Any, validator: EventValidator = ALL) -> Rejection:
    result = check(raw, validator)
    assert isinstance(result, Rejection), result
    assert result.index == 3
    assert result.code in REJECTION_CODES
    return result


def accepted(raw: Any, validator: EventValidator = ALL) -> Event:
    result = check(raw, validator)
    assert isinstance(result, Event), result
    return result


# ---- a valid event -----------------------------------------------------------------------------


def test_a_valid_event_becomes_a_model_event() -> None:
    result = accepted(event(properties={"size": "std-1x", "app": "web"}))
    assert result == Event(
        "e1",
        "acme",
        "dyno.seconds",
        Decimal("1.5"),
        NOW,
        (("app", "web"), ("size", "std-1x")),  # sorted by key
        "platform",
        NOW + 7,
    )


def test_count_meters_ignore_the_quantity_and_count_one() -> None:
    for quantity in (_DROP, 7, "12.5", 1.5, None, "garbage", -1):
        assert accepted(event(meter="router.requests", quantity=quantity)).quantity == 1


def test_integer_quantities_stay_integers() -> None:
    assert accepted(event(quantity=0)).quantity == 0
    big = 2**64 - 1
    result = accepted(event(quantity=big)).quantity
    assert result == big
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12.5", Decimal("12.5")),
        ("0.25", Decimal("0.25")),
        ("1E-7", Decimal("0.0000001")),
        ("1e3", Decimal(1000)),
        ("+5", Decimal(5)),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("-0", Decimal(0)),
        ("0.000", Decimal(0)),
        ("1" * 40, Decimal("1" * 40)),
        ("0." + "0" * 38 + "1", Decimal("1E-39")),
        ("12.5000000000000000000000000000000000000000000000", Decimal("12.5")),
        ("1E+39", Decimal("1E+39")),
    ],
)
def test_decimal_strings_are_parsed_exactly(text: str, value: Decimal) -> None:
    quantity = accepted(event(quantity=text)).quantity
    assert isinstance(quantity, Decimal)
    assert quantity == value
    assert not quantity.is_signed()


def test_properties_may_be_absent_nil_or_empty() -> None:
    assert accepted(event()).properties == ()
    assert accepted(event(properties=None)).properties == ()
    assert accepted(event(properties={})).properties == ()
    assert accepted(event(properties={"": ""})).properties == (("", ""),)


def test_lengths_at_the_limits_are_accepted() -> None:
    result = accepted(
        event(
            id="i" * 200,
            account="a" * 128,
            properties={f"k{i:02d}" + "k" * 61: "v" * 256 for i in range(16)},
        )
    )
    assert len(result.properties) == 16
    accepted(event(account="user:42@initech.io_x-Y"))


def test_the_time_window_includes_both_ends() -> None:
    accepted(event(time=NOW - LATE))
    accepted(event(time=NOW + 5 * MINUTE_MS))
    assert rejected(event(time=NOW - LATE - 1)).code == "time_out_of_range"
    assert rejected(event(time=NOW + 5 * MINUTE_MS + 1)).code == "time_out_of_range"


# ---- every rejection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (event(id=_DROP), "invalid_id", "id is missing"),
        (event(id=12), "invalid_id", "not an integer (12)"),
        (event(id=None), "invalid_id", "not nil"),
        (event(id=b"e1"), "invalid_id", "not binary data"),
        (event(id=""), "invalid_id", "id is empty"),
        (event(id="x" * 201), "invalid_id", "201 characters"),
        (event(account=_DROP), "invalid_account", "account is missing"),
        (event(account=""), "invalid_account", "empty"),
        (event(account="a" * 129), "invalid_account", "129 characters"),
        (event(account="acme/eu"), "invalid_account", "contains '/' at position 4"),
        (event(account="café"), "invalid_account", "contains 'é'"),
        (event(account=5), "invalid_account", "not an integer"),
        (event(meter=_DROP), "unknown_meter", "meter is missing"),
        (event(meter="dyno.second"), "unknown_meter", "did you mean 'dyno.seconds'"),
        (event(meter="nothing.like.it"), "unknown_meter", "not configured on this server"),
        (event(meter=["dyno.seconds"]), "unknown_meter", "not an array"),
        (event(quantity=_DROP), "invalid_quantity", "quantity is missing"),
        (event(quantity=1.5), "invalid_quantity", "floats are rejected"),
        (event(quantity=1.0), "invalid_quantity", "a float (1.0)"),
        (event(quantity=True), "invalid_quantity", "a boolean (true)"),
        (event(quantity=None), "invalid_quantity", "not nil"),
        (event(quantity=-3), "invalid_quantity", "must be >= 0, not -3"),
        (event(quantity="-0.5"), "invalid_quantity", "must be >= 0"),
        (event(quantity="NaN"), "invalid_quantity", "not a finite number"),
        (event(quantity="-inf"), "invalid_quantity", "not a finite number"),
        (event(quantity="sNaN"), "invalid_quantity", "not a finite number"),
        (event(quantity=""), "invalid_quantity", "not a decimal number"),
        (event(quantity=" 1"), "invalid_quantity", "not a decimal number"),
        (event(quantity="1_000"), "invalid_quantity", "not a decimal number"),
        (event(quantity="1,5"), "invalid_quantity", "not a decimal number"),
        (event(quantity="١٢"), "invalid_quantity", "not a decimal number"),  # Arabic digits
        (event(quantity="0x10"), "invalid_quantity", "not a decimal number"),
        (event(quantity="1" * 41), "invalid_quantity", "41 digits"),
        (event(quantity="1E+40"), "invalid_quantity", "41 digits"),
        (event(quantity="1E-40"), "invalid_quantity", "41 digits"),
        (event(quantity="1e99999999999999999999"), "invalid_quantity", "far too large"),
        (event(quantity="1" * 65), "invalid_quantity", "a string of 65 characters"),
        (event(quantity=[1]), "invalid_quantity", "not an array"),
        (event(time=_DROP), "invalid_time", "time is missing"),
        (event(time=float(NOW)), "invalid_time", "not a float"),
        (event(time=str(NOW)), "invalid_time", "not a string"),
        (event(time=True), "invalid_time", "not a boolean"),
        (event(time=None), "invalid_time", "not nil"),
        (event(time=NOW + 6 * MINUTE_MS), "time_out_of_range", "more than 5 minutes in the"),
        (event(time=NOW - 36 * DAY_MS), "time_out_of_range", "older than late_window (35 days)"),
        (event(time=NOW // 1000), "time_out_of_range", "looks like seconds"),
        (event(time=-(2**63)), "time_out_of_range", "far outside any calendar date"),
        (event(properties="size=1"), "invalid_properties", "not a string"),
        (event(properties=[["a", "b"]]), "invalid_properties", "map of string to string"),
        (event(properties={str(i): "" for i in range(17)}), "invalid_properties", "17 entries"),
        (event(properties={"k": 1}), "invalid_properties", "properties['k'] must be a string"),
        (event(properties={"k": None}), "invalid_properties", "not nil"),
        (event(properties={7: "v"}), "invalid_properties", "keys must be strings"),
        (event(properties={"k" * 65: "v"}), "invalid_properties", "65 characters long"),
        (event(properties={"k": "v" * 257}), "invalid_properties", "257 characters long"),
        ([1, 2], "invalid_event", "this one is an array (2 items)"),
        (None, "invalid_event", "this one is nil"),
        ("e1", "invalid_event", "this one is a string"),
        (event(qty=1), "invalid_event", "unknown key 'qty' (did you mean 'quantity'?)"),
        (event(Time=NOW), "invalid_event", "unknown key 'Time' (did you mean 'time'?)"),
        (_with_key(1), "invalid_event", "a key that is an integer (1)"),
        (_with_key(b"id"), "invalid_event", "a key that is binary data"),
    ],
)
def test_each_rejection_names_the_field_and_why(raw: Any, code: str, fragment: str) -> None:
    rejection = rejected(raw)
    assert rejection.code == code
    assert fragment in rejection.message, rejection.message


def test_a_producer_limited_to_some_meters() -> None:
    rejection = rejected(event(), ROUTER)
    assert rejection.code == "not_permitted"
    assert rejection.message == (
        "producer 'router' may not write meter 'dyno.seconds' (its producers.meters in the"
        " server config permits: router.requests)"
    )
    # suggestions come only from the meters the producer may write
    assert "did you mean" not in rejected(event(meter="dyno.second"), ROUTER).message
    accepted(event(meter="router.requests"), ROUTER)


def test_the_rejection_names_the_id_whenever_it_is_valid() -> None:
    assert rejected(event(time="x")).id == "e1"
    assert rejected(event(extra=1)).id == "e1"  # even for invalid_event
    assert rejected(event(id=7)).id is None
    assert rejected(event(id="x" * 201)).id is None
    assert rejected([1]).id is None
    assert rejected(event(time="x")).to_wire() == {
        "index": 3,
        "id": "e1",
        "code": "invalid_time",
        "message": rejected(event(time="x")).message,
    }


def test_the_first_problem_decides_the_code() -> None:
    assert rejected(event(id=1, account=2, time="x")).code == "invalid_id"
    assert rejected(event(account=2, meter="x")).code == "invalid_account"
    assert rejected(event(meter="x", quantity=1.5)).code == "unknown_meter"
    assert rejected(event(quantity=1.5, time="x")).code == "invalid_quantity"
    assert rejected(event(time="x", properties=[])).code == "invalid_time"
    assert rejected(event(extra=1, id=5)).code == "invalid_event"


def test_messages_stay_short_whatever_the_input() -> None:
    huge = "x" * 100_000
    for raw in (event(account=huge), event(meter=huge), event(quantity=huge), event(id=huge)):
        assert len(rejected(raw).message) < 300


def test_written_digits() -> None:
    assert written_digits(Decimal("1E+3")) == 4
    assert written_digits(Decimal("0.0015")) == 5
    assert written_digits(Decimal("12.50")) == 3
    assert written_digits(Decimal("120")) == 3
    assert written_digits(Decimal("1.2E+2")) == 3


def test_describe_never_renders_deep_values() -> None:
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    assert describe(deep) == "an array (1 items)"
    assert describe({"a": deep}) == "a map (1 entries)"
    assert describe(msgpack.Timestamp(1)) == "a msgpack Timestamp"


# ---- properties ------------------------------------------------------------------------------

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=6)
    ),
    max_leaves=25,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=210) | _msgpack_values,
        "account": st.from_regex(r"[A-Za-z0-9._:@-]{1,130}", fullmatch=True) | _msgpack_values,
        "meter": st.sampled_from([*METERS, "other"]) | _msgpack_values,
        "quantity": st.integers(-5, 2**64 - 1)
        | st.decimals(allow_nan=True, allow_infinity=True).map(str)
        | _msgpack_values,
        "time": st.integers(NOW - 40 * DAY_MS, NOW + 10 * MINUTE_MS) | _msgpack_values,
        "properties": st.dictionaries(st.text(max_size=70), st.text(max_size=260), max_size=18)
        | _msgpack_values,
        "unknown": _msgpack_values,
    },
)


@given(raw=_fields | _msgpack_values)
def test_validation_never_raises_and_accepts_only_what_the_protocol_allows(raw: Any) -> None:
    result = check(raw)
    if isinstance(result, Rejection):
        assert result.code in REJECTION_CODES
        assert result.message
        return
    assert isinstance(raw, dict)
    assert set(raw) <= {"id", "account", "meter", "quantity", "time", "properties"}
    assert isinstance(result.id, str)
    assert 1 <= len(result.id) <= 200
    assert 1 <= len(result.account) <= 128
    assert result.meter in METERS
    assert NOW - LATE <= result.time <= NOW + 5 * MINUTE_MS
    assert type(result.quantity) in (int, Decimal)
    assert result.quantity >= 0
    if METERS[result.meter].aggregation is Aggregation.COUNT:
        assert result.quantity == 1
    else:
        assert not isinstance(raw["quantity"], float | bool)
    assert list(result.properties) == sorted(result.properties)
    assert len(result.properties) <= 16


@given(
    value=st.decimals(min_value=0, max_value=Decimal("9" * 20), allow_nan=False, places=None),
    spelling=st.sampled_from(["plain", "sci", "eng"]),
)
def test_a_decimal_is_parsed_exactly_however_it_is_spelled(value: Decimal, spelling: str) -> None:
    text = {
        "plain": format(value, "f"),
        "sci": str(value),
        "eng": value.to_eng_string(),
    }[spelling]
    result = check(event(quantity=text))
    if isinstance(result, Rejection):  # only past the caps: 40 digits, 64 characters
        assert result.code == "invalid_quantity"
        if len(text) > QUANTITY_TEXT_MAX:
            assert f"a string of {len(text)} characters" in result.message
        else:
            assert "digits written out" in result.message
            assert written_digits(value) > QUANTITY_DIGITS_MAX
        return
    assert result.quantity == value  # exact: compared as Decimals, no context involved
    assert written_digits(value) <= QUANTITY_DIGITS_MAX or value.is_zero()


# ---- frames (§2.4) ----------------------------------------------------------------------------


def fault_of(call: Any) -> Fault:
    with pytest.raises(Fault) as raised:
        call()
    assert raised.value.code in FAULT_CLOSE_CODES
    return raised.value


def test_decode_frame_wants_one_binary_msgpack_map() -> None:
    assert decode_frame(msgpack.packb({"type": "batch"})) == {"type": "batch"}
    assert decode_frame(msgpack.packb({1: 2})) == {1: 2}  # any key: checks come later
    for message, fragment in [
        ("{}", "text frame"),
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb({}) + b"\x00", "extra bytes"),
        (b"\x81\xa1k\xa2\xff\xfe", "not valid UTF-8"),
        (b"\x91" * 5000 + b"\xc0", "nested too deeply"),
        (b"\x81\x91\x01\x01", "a map key is an array or a map"),
        (b"\xdf\xff\xff\xff\xff", "not valid msgpack"),
        (msgpack.packb([1]), "holds msgpack an array"),
        (msgpack.packb(None), "holds msgpack nil"),
    ]:
        fault = fault_of(lambda m=message: decode_frame(m))
        assert fault.code == "malformed_frame"
        assert fault.close_code == 1003
        assert fragment in fault.message, fault.message


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ({"seq": 1}, "unknown_type", "no 'type' key"),
        ({"type": "ack"}, "unknown_type", "the server sends that type"),
        ({"type": "Batch"}, "unknown_type", "unknown frame type 'Batch'"),
        ({"type": None}, "unknown_type", "'type' is nil"),
        ({"type": "batch", "events": [{}]}, "bad_batch", "no 'seq'"),
        ({"type": "batch", "seq": -1, "events": [{}]}, "bad_batch", "integer >= 0"),
        ({"type": "batch", "seq": True, "events": [{}]}, "bad_batch", "a boolean"),
        ({"type": "batch", "seq": 1.0, "events": [{}]}, "bad_batch", "a float"),
        ({"type": "batch", "seq": 4, "events": [{}]}, "bad_batch", "not greater than"),
        ({"type": "batch", "seq": 5, "events": [{}]}, "bad_batch", "seq 5 is not greater"),
        ({"type": "batch", "seq": 6}, "bad_batch", "'events' is missing"),
        ({"type": "batch", "seq": 6, "events": {}}, "bad_batch", "'events' is a map"),
        ({"type": "batch", "seq": 6, "events": []}, "bad_batch", "has no events"),
        ({"type": "batch", "seq": 6, "events": [{}] * 4}, "bad_batch", "4 events; at most 3"),
    ],
)
def test_parse_batch_faults(frame: dict[str, Any], code: str, fragment: str) -> None:
    fault = fault_of(lambda: parse_batch(frame, 5, 3))
    assert fault.code == code
    assert fault.close_code == 1002
    assert fragment in fault.message, fault.message


def test_parse_batch_ignores_unknown_envelope_keys() -> None:
    frame = {"type": "batch", "seq": 6, "events": [{}], "compression": "none"}
    assert parse_batch(frame, 5, 3) == (6, [{}])
    assert parse_batch({"type": "batch", "seq": 0, "events": [1, 2, 3]}, -1, 3)[0] == 0


def test_server_frames() -> None:
    assert msgpack.unpackb(hello_frame(10, 20, 30)) == {
        "type": "hello",
        "protocol": 1,
        "server": "meterd/0.1.0",
        "max_frame_bytes": 10,
        "max_batch": 20,
        "window": 30,
    }
    assert msgpack.unpackb(ack_frame(4, 1, 2, [])) == {
        "type": "ack",
        "seq": 4,
        "accepted": 1,
        "duplicates": 2,
        "rejected": [],
    }
    assert msgpack.unpackb(error_frame("bad_batch", "why")) == {
        "type": "error",
        "code": "bad_batch",
        "message": "why",
    }
    assert FAULT_CLOSE_CODES == {
        "frame_too_large": 1009,
        "malformed_frame": 1003,
        "unknown_type": 1002,
        "bad_batch": 1002,
        "unavailable": 1011,
        "shutting_down": 1001,
        "too_many_connections": 1008,
    }


def test_an_ack_of_rejected_long_ids_fits_in_the_frame_limit() -> None:
    """The worst case: every event of a full batch rejected, each with a 200-character id
    and a long message. The ack is cut to the limit by shortening messages only."""
    rejected = [
        {
            "index": index,
            "id": f"{index:04d}" + "i" * 196,
            "code": "time_out_of_range",
            "message": "time is more than 35 days in the past " + "x" * 300,
        }
        for index in range(1000)
    ]
    whole = ack_frame(1, 0, 0, rejected)
    limit = 320_000
    assert len(whole) > limit  # the case is real
    capped = ack_frame(1, 0, 0, rejected, limit)
    assert len(capped) <= limit
    frame = msgpack.unpackb(capped)
    assert [(r["index"], r["id"], r["code"]) for r in frame["rejected"]] == [
        (r["index"], r["id"], r["code"]) for r in rejected
    ]
    assert all(r["message"].startswith("time is more than") for r in frame["rejected"])
    assert all(len(r["message"]) <= 60 for r in frame["rejected"])
    # Under the limit nothing is cut.
    assert ack_frame(1, 0, 0, rejected[:3], limit) == ack_frame(1, 0, 0, rejected[:3])
    # Too small even without messages: messages go, the rest stays.
    tiny = msgpack.unpackb(ack_frame(1, 0, 0, rejected, 300_000))
    assert {r["message"] for r in tiny["rejected"]} == {""}
    assert len(tiny["rejected"]) == 1000


# ---- the fast path agrees with the precise one ---------------------------------------------------
#
# EventValidator.validate takes a fast path for well-formed events and falls back to
# validate_precise (main's validator, every check in order) for the rest; validate_batch
# does the same for a whole batch. Both must give exactly validate_precise's verdicts.

_LOW = NOW - LATE
_HIGH = NOW + 5 * MINUTE_MS
_NASTY_TEXTS = (
    "",
    " 1",
    "1 ",
    "1_0",
    "\u0663",
    "\u00b2",
    "1\u0663",
    "NaN",
    "nan",
    "-nan",
    "sNaN",
    "Infinity",
    "-inf",
    "1E+40",
    "1E+39",
    "1e3",
    "1E-7",
    "-0",
    "+0",
    "-0.0",
    "0.000",
    "-1",
    "+5",
    ".5",
    "5.",
    ".",
    "..",
    "1.2.3",
    "1,5",
    "0x10",
    "00012.5000",
    "1" * 40,
    "1" * 41,
    "1." + "0" * 39,
    "0." + "0" * 38 + "1",
    "0." + "0" * 39 + "1",
    "9" * 64,
    "9" * 65,
    "1" * 20 + "." + "1" * 20,
    "1" * 21 + "." + "1" * 20,
    "1e999999999999999999999",
)
_nasty_texts = st.sampled_from(_NASTY_TEXTS)
_quantities = (
    st.integers(-(2**64), 2**70)
    | st.booleans()
    | st.floats()
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.decimals(min_value=0, max_value=10**8, places=3).map(lambda d: format(d, "f"))
    | st.from_regex(r"[+-]?[0-9]{0,45}(\.[0-9]{0,45})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
    | _nasty_texts
    | st.text(max_size=70)
)
_times = (
    st.sampled_from([_LOW - 1, _LOW, _LOW + 1, NOW, _HIGH - 1, _HIGH, _HIGH + 1])
    | st.integers(_LOW - MINUTE_MS, _HIGH + MINUTE_MS)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([NOW // 1000, True, float(NOW), None, str(NOW)])
)
_property_texts = st.sampled_from(["", "a", "size", "std-1x", "x" * 64, "x" * 65, "v" * 256])
_ODD_PROPERTY_MAPS: tuple[Any, ...] = (
    {"size": "std-1x", "app": "web"},
    {"app": "web", "size": "std-1x"},
    {"size": "std-1x"},
    {},
    {"size": 1},
    {1: "x"},
    {"size": ["std-1x"]},
    {"size": {"a": "b"}},
    {"size": None},
    {"v": "v" * 257},
    {"k" * 65: "v"},
    {f"k{n}": "v" for n in range(16)},
    {f"k{n}": "v" for n in range(17)},
)
_properties = (
    st.sampled_from(_ODD_PROPERTY_MAPS)  # repeated maps, so the validator's cache is hit
    | st.dictionaries(_property_texts | st.text(max_size=70), st.text(max_size=260), max_size=18)
    | st.dictionaries(st.text(max_size=3) | st.integers(), _msgpack_values, max_size=3)
    | _msgpack_values
)
_any_field: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["e1", "e2", "", "i" * 200, "i" * 201]) | _msgpack_values,
    "account": st.sampled_from(["acme", "acct-00001", "a" * 128, "a" * 129, "a b", "\u0663"])
    | st.from_regex(r"[A-Za-z0-9._:@-]{0,130}", fullmatch=True)
    | _msgpack_values,
    "meter": st.sampled_from([*METERS, "dyno.second", "other", ""])
    | st.lists(st.text(max_size=3), max_size=2)
    | _msgpack_values,
    "quantity": _quantities,
    "time": _times,
    "properties": _properties,
}
_extra_keys = st.dictionaries(
    st.sampled_from(["unknown", "Id", "ids", ""]) | st.integers() | st.binary(max_size=3),
    _msgpack_values,
    min_size=1,
    max_size=2,
)
_events = st.fixed_dictionaries({}, optional=_any_field)
_GOOD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(min_size=1, max_size=20),
    "account": st.from_regex(r"[A-Za-z0-9._:@-]{1,20}", fullmatch=True),
    "meter": st.sampled_from(list(METERS)),
    "time": st.integers(_LOW, _HIGH),
}
_good_quantities = st.decimals(min_value=0, max_value=10**6, places=3).map(str) | st.integers(
    0, 10**6
)
_good_properties = (
    st.none()
    | st.sampled_from([{"size": "std-1x", "app": "web"}, {"app": "web", "size": "std-1x"}])
    | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
)
_good = st.fixed_dictionaries(
    {**_GOOD_FIELDS, "quantity": _good_quantities}, optional={"properties": _good_properties}
)


def _off(base: dict[str, Any], field: str) -> st.SearchStrategy[dict[Any, Any]]:
    """``base`` with ``field`` replaced by any value, dropped, or an unknown key added."""
    dropped = {key: value for key, value in base.items() if key != field}
    return (
        _any_field[field].map(lambda value: {**base, field: value})
        | st.just(dropped)
        | _extra_keys.map(lambda extra: {**base, **extra})
    )


# Well-formed events with one thing wrong (or not: a replaced field may be good), so that
# every check of the fast path meets values on both sides of it.
_one_field_off = st.tuples(_good, st.sampled_from(sorted(_any_field))).flatmap(
    lambda pair: _off(*pair)
)
_validators = st.sampled_from([ALL, ROUTER])


def _same_verdict(fast: Event | Rejection, precise: Event | Rejection) -> None:
    assert type(fast) is type(precise)
    assert fast == precise
    if isinstance(fast, Event):  # the same representation, not only equal values
        assert isinstance(precise, Event)
        assert type(fast.quantity) is type(precise.quantity)
        assert str(fast.quantity) == str(precise.quantity)
        assert fast.fingerprint() == precise.fingerprint()
        assert fast.dedupe_key() == precise.dedupe_key()


_odd_values: dict[Any, list[Any]] = {  # field -> values (unknown keys too)
    "unknown": [1, None, "x"],
    "Id": ["e1"],
    1: [1],
    b"id": ["e1"],
    "id": ["", "i" * 200, "i" * 201, 7, None, True, b"e1", ["e1"]],
    "account": ["a" * 128, "a" * 129, "", "a b", "acme\n", "\u0663", 7, None, ["acme"]],
    "meter": [*METERS, "dyno.second", "", 7, None, ["dyno.seconds"], {"a": 1}],
    "quantity": [
        *_NASTY_TEXTS,
        0,
        1,
        -1,
        2**64,
        -(2**64),
        True,
        False,
        1.5,
        float("nan"),
        None,
        [],
        {},
        b"1",
    ],
    "time": [
        *(_LOW - 1, _LOW, _LOW + 1, _HIGH - 1, _HIGH, _HIGH + 1),
        *(NOW // 1000, True, float(NOW), None, str(NOW), 2**70, -(2**70)),
    ],
    "properties": [
        *_ODD_PROPERTY_MAPS,
        None,
        [],
        "size",
        7,
    ],
}


@pytest.mark.parametrize("field", list(_odd_values), ids=repr)
def test_validate_agrees_with_validate_precise_on_odd_values(field: Any) -> None:
    for meter, validator, value in itertools.product(METERS, (ALL, ROUTER), _odd_values[field]):
        good = event(meter=meter, properties={"size": "std-1x"})
        raw = {**good, field: value}
        _same_verdict(
            validator.validate(3, raw, NOW, NOW + 7),
            validator.validate_precise(3, raw, NOW, NOW + 7),
        )
        for batch in ([raw], [raw, raw], [good, raw]):  # whole-batch path, then per event
            _same_batch_verdicts(validator, batch)


def _same_batch_verdicts(validator: EventValidator, raws: list[Any]) -> None:
    """validate_batch(raws) is validate_precise's verdicts, grouped by account."""
    groups, rejected = validator.validate_batch(raws, NOW)
    verdicts = [validator.validate_precise(n, raw, NOW, NOW) for n, raw in enumerate(raws)]
    assert rejected == [verdict for verdict in verdicts if isinstance(verdict, Rejection)]
    expected: dict[str, tuple[list[int], list[Event]]] = {}
    for index, verdict in enumerate(verdicts):
        if isinstance(verdict, Event):
            indexes, events = expected.setdefault(verdict.account, ([], []))
            indexes.append(index)
            events.append(verdict)
    assert list(groups) == list(expected)  # accounts in order of first appearance
    assert groups == expected
    for account, (_, events) in groups.items():
        for event_, reference in zip(events, expected[account][1], strict=True):
            _same_verdict(event_, reference)


def test_validate_agrees_with_validate_precise_on_missing_fields() -> None:
    fields = ("id", "account", "meter", "quantity", "time", "properties")
    for meter, validator, field in itertools.product(METERS, (ALL, ROUTER), fields):
        good = event(meter=meter, properties={"size": "std-1x"})
        raw = {key: value for key, value in good.items() if key != field}
        _same_verdict(
            validator.validate(3, raw, NOW, NOW + 7),
            validator.validate_precise(3, raw, NOW, NOW + 7),
        )
        for batch in ([raw], [raw, raw], [good, raw]):
            _same_batch_verdicts(validator, batch)


@settings(max_examples=examples(800))
@given(raw=_events | _good | _one_field_off | _msgpack_values, validator=_validators)
def test_validate_agrees_with_validate_precise(raw: Any, validator: EventValidator) -> None:
    fast = validator.validate(3, raw, NOW, NOW + 7)
    precise = validator.validate_precise(3, raw, NOW, NOW + 7)
    _same_verdict(fast, precise)


@st.composite
def _batches(draw: st.DrawFn) -> list[Any]:
    """Batches of good events alike enough for validate_batch's whole-batch path (one kind
    of quantity, meters that are not counts, properties all maps or all nil), or not quite;
    sometimes with one odd event in them."""
    quantities = draw(
        st.sampled_from(
            [
                st.decimals(min_value=0, max_value=10**6, places=3).map(str),
                st.integers(0, 2**64),
                st.sampled_from(["0", "0.000", "1" * 40, "1" * 20 + "." + "1" * 20, "5.", ".5"]),
                _good_quantities,
            ]
        )
    )
    meters = draw(
        st.sampled_from([["dyno.seconds"], ["dyno.seconds", "postgres.bytes"], [*METERS]])
    )
    properties = draw(
        st.sampled_from(
            [
                st.none(),
                st.sampled_from([{"size": "a", "app": "b"}, {"app": "b", "size": "a"}, {}]),
                st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                _good_properties,
            ]
        )
    )
    events: list[Any] = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    **_GOOD_FIELDS,
                    "meter": st.sampled_from(meters),
                    "quantity": quantities,
                    "properties": properties,
                }
            ),
            min_size=1,
            max_size=10,
        )
    )
    if meters == ["router.requests"] and draw(st.booleans()):  # a count's quantity may be missing
        events = [{k: v for k, v in raw.items() if k != "quantity"} for raw in events]
    if draw(st.booleans()):
        odd = draw(_one_field_off | _events | _msgpack_values)
        events.insert(draw(st.integers(0, len(events))), odd)
    return events


@settings(max_examples=examples(300))
@given(
    raws=_batches()
    | st.lists(_events | _good | _one_field_off | _msgpack_values, min_size=1, max_size=12),
    validator=_validators,
)
def test_validate_batch_agrees_with_validate_precise(
    raws: list[Any], validator: EventValidator
) -> None:
    _same_batch_verdicts(validator, raws)


def test_validate_batch_takes_a_common_batch_whole() -> None:
    """The whole-batch path must not quietly hand every batch to the per-event one."""
    low, high = NOW - LATE, NOW + 5 * MINUTE_MS
    maps = [{"size": "std-1x", "app": "web"}, {"app": "web", "size": "x"}, {}]
    batch = [
        event(id=f"e{n}", account=f"a{n % 3}", time=low + n, properties=maps[n % 3])
        for n in range(9)
    ]
    events = ALL._accept_all(batch, low, high, NOW)
    assert events == [ALL.validate_precise(n, raw, NOW, NOW) for n, raw in enumerate(batch)]
    groups, rejected = ALL.validate_batch(batch, NOW)
    assert rejected == []
    assert {account: indexes for account, (indexes, _) in groups.items()} == {
        "a0": [0, 3, 6],
        "a1": [1, 4, 7],
        "a2": [2, 5, 8],
    }
    for odd in (event(quantity=-1), event(time=high + 1), event(meter="router.requests")):
        assert ALL._accept_all([*batch, odd], low, high, NOW) is None
    counts = [event(meter="router.requests", quantity=_DROP), event(meter="router.requests")]
    assert ALL._accept_all(counts, low, high, NOW) == [
        ALL.validate_precise(n, raw, NOW, NOW) for n, raw in enumerate(counts)
    ]
    for other in ({**event(), "properties": None}, event(quantity=5), {**batch[0], "x": 1}):
        assert ALL._accept_all([*batch, other], low, high, NOW) is None
    assert ALL._accept_all([], low, high, NOW) is None


def test_the_fast_path_takes_the_common_events() -> None:
    """The fast path must not quietly hand everything to the precise one."""
    low, high = NOW - LATE, NOW + 5 * MINUTE_MS
    for raw in (
        event(),
        event(quantity=12),
        event(quantity="0.000"),
        event(quantity="1" * 40),
        event(meter="router.requests", quantity=1.5),
        event(meter="router.requests", quantity=_DROP),
        event(properties=None),
        event(properties={"size": "std-1x", "app": "web"}),
        event(time=low),
        event(time=high),
    ):
        assert ALL._accept(raw, low, high, NOW) == ALL.validate_precise(0, raw, NOW, NOW)
    for raw in (
        event(quantity="1E3"),
        event(quantity="1" * 20 + "." + "1" * 20),
        event(quantity="-0"),
    ):
        assert ALL._accept(raw, low, high, NOW) is None  # left to the precise path...
        assert isinstance(ALL.validate(0, raw, NOW, NOW), Event)  # ...which accepts them


def test_repeated_property_maps_share_one_tuple_and_the_cache_is_bounded() -> None:
    validator = EventValidator(METERS, Producer("platform", "t1"), LATE)
    first = validator.validate(0, event(properties={"size": "a", "app": "b"}), NOW, NOW)
    again = validator.validate(1, event(properties={"size": "a", "app": "b"}), NOW, NOW)
    swapped = validator.validate(2, event(properties={"app": "b", "size": "a"}), NOW, NOW)
    assert isinstance(first, Event)
    assert isinstance(again, Event)
    assert isinstance(swapped, Event)
    assert first.properties == (("app", "b"), ("size", "a")) == swapped.properties
    assert again.properties is first.properties
    for n in range(3000):
        result = validator.validate(n, event(properties={"n": str(n)}), NOW, NOW)
        assert isinstance(result, Event)
        assert result.properties == (("n", str(n)),)
    assert len(validator._properties_seen) <= 1024
