"""A correction's request through the shard's log message and back, whole (no NATS).

The node that validates a correction publishes its request (:func:`message_of`) and the
shard's owner records what it reads back (:func:`request_of`): every field must arrive as
it was sent, or the owner records another correction than the one the client asked for.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.billing import AdjustmentKind, AdjustmentRequest, VoidRequest
from meterd.billing._corrections import differing_field, replay
from meterd.cluster._corrections import message_of, request_of
from meterd.partitions._messages import Correction, decode, encode
from tests.examples import examples

text = st.text(min_size=1, max_size=20)
keys = st.none() | st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True)
dims = st.lists(st.text(max_size=8), max_size=3).map(tuple)
millis = st.integers(min_value=0, max_value=1 << 50)
quantities = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal(10**12), places=6, allow_nan=False
)

adjustments = st.builds(
    AdjustmentRequest,
    account=text,
    meter=text,
    start=millis,
    end=millis,
    dims=dims,
    kind=st.sampled_from(AdjustmentKind),
    quantity=quantities,
    by=text,
    reason=text,
    key=keys,
)
voids = st.builds(
    VoidRequest,
    account=text,
    event_id=text,
    meter=text,
    time=millis,
    dims=dims,
    quantity=quantities.map(str),
    by=text,
    reason=text,
    key=keys,
)


@settings(max_examples=examples(200))
@given(request=adjustments | voids, at=millis)
def test_a_request_reads_back_whole_from_its_log_message(
    request: AdjustmentRequest | VoidRequest, at: int
) -> None:
    message = message_of(request, id="correction:n1:x", shard=3, at=at)
    read = decode(encode(message))
    assert isinstance(read, Correction)
    assert (read.id, read.shard, read.at) == ("correction:n1:x", 3, at)
    back = request_of(read)
    assert back == request
    assert type(back) is type(request)
    if isinstance(request, AdjustmentRequest):  # the quantity as written, not only its value
        assert isinstance(back, AdjustmentRequest)
        assert str(back.quantity) == str(request.quantity)


@settings(max_examples=examples(100))
@given(request=adjustments | voids, row=st.integers(1, 1 << 40), at=millis)
def test_a_recorded_request_answers_the_same_request_again(
    request: AdjustmentRequest | VoidRequest, row: int, at: int
) -> None:
    recorded = request.recorded(row, at)
    assert (recorded.id, recorded.at, recorded.key) == (row, at, request.key)
    assert differing_field(recorded, request) is None
    assert replay(recorded, request) == recorded  # replayed does not take part in ==
    assert replay(recorded, request).replayed


def test_a_void_asked_before_its_event_is_found_matches_the_void_recorded() -> None:
    asked = VoidRequest.asked("acme", "e1", "bob", "twice", "k")
    found = VoidRequest("acme", "e1", "dyno", 5, ("std",), "3", "bob", "twice", "k")
    assert differing_field(found.recorded(1, 9), asked) is None
    other = VoidRequest.asked("acme", "e1", "bob", "other reason", "k")
    assert differing_field(found.recorded(1, 9), other) == "reason"
    credit = AdjustmentRequest(
        "acme", "dyno", 0, 60_000, ("std",), AdjustmentKind.CREDIT, Decimal(1), "bob", "x", "k"
    )
    assert differing_field(found.recorded(1, 9), credit) == "operation"
    assert differing_field(credit.recorded(2, 9), asked) == "operation"


def test_a_message_of_an_unknown_kind_is_refused() -> None:
    message = Correction(
        id="c", shard=0, kind="refund", account="a", by="b", reason="r", at=0, meter="m"
    )
    with pytest.raises(ValueError, match="unknown kind 'refund'"):
        request_of(message)
