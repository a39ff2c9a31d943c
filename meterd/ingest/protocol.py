"""The producer protocol's frames (protocol.md §2): decoding what a producer sends,
encoding what the server sends, and the connection faults of §2.4.

Every frame is one msgpack map in a binary websocket message. :func:`decode_frame` and
:func:`parse_batch` raise :class:`Fault` for a fault of the connection as a whole; a
:class:`Fault` knows its ``error`` frame and its close code.

Choices where the protocol is silent (see :mod:`meterd.ingest`):

* Keys of a batch frame other than ``type``, ``seq`` and ``events`` are ignored (room for
  later protocol versions); an event's unknown keys are not (``invalid_event``).
* A ``str`` that is not valid UTF-8, trailing bytes after the map, and a map key that is
  itself an array or a map make a frame "not msgpack" here: ``malformed_frame``.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from meterd import __version__

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "FAULT_CLOSE_CODES",
    "ACK_FLOOR_BYTES",
    "ACK_OVERHEAD",
    "CLOSE_POLICY_VIOLATION",
    "PROTOCOL_VERSION",
    "REJECTION_OVERHEAD",
    "Fault",
    "ack_frame",
    "decode_frame",
    "encode",
    "error_frame",
    "hello_frame",
    "parse_batch",
    "text_bytes",
]

PROTOCOL_VERSION: Final = 1

CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011

FAULT_CLOSE_CODES: Final = {
    # protocol.md §2.4
    "frame_too_large": CLOSE_MESSAGE_TOO_BIG,
    "malformed_frame": CLOSE_UNSUPPORTED_DATA,
    "unknown_type": CLOSE_PROTOCOL_ERROR,
    "bad_batch": CLOSE_PROTOCOL_ERROR,
    # meterd's additions (documented in meterd.ingest)
    "unavailable": CLOSE_INTERNAL_ERROR,
    "shutting_down": CLOSE_GOING_AWAY,
    "too_many_connections": CLOSE_POLICY_VIOLATION,
}

_packb = msgpack.Packer(use_bin_type=True).pack


class Fault(Exception):
    """A fault of the connection as a whole: send :meth:`frame`, then close with ``close_code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return FAULT_CLOSE_CODES[self.code]

    def frame(self) -> bytes:
        return error_frame(self.code, self.message)


def encode(frame: dict[str, Any]) -> bytes:
    data: bytes = _packb(frame)
    return data


def hello_frame(max_frame_bytes: int, max_batch: int, window: int) -> bytes:
    return encode(
        {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "server": f"meterd/{__version__}",
            "max_frame_bytes": max_frame_bytes,
            "max_batch": max_batch,
            "window": window,
        }
    )


_SHORT_MESSAGE: Final = 60  # characters a rejection message keeps when an ack is too large
ACK_FLOOR_BYTES: Final = 65_536
"""Acks are capped at ``max(max_frame_bytes, ACK_FLOOR_BYTES)``: a tiny ``max_frame_bytes``
does not cut the messages of an ordinary ack."""


def ack_frame(
    seq: int,
    accepted: int,
    duplicates: int,
    rejected: list[dict[str, Any]],
    max_bytes: int | None = None,
) -> bytes:
    """The ``ack`` frame; at most ``max_bytes`` (the server's ``max_frame_bytes``) if given.

    A batch whose every event is rejected with a long id and a long message could make an
    ack larger than the frames the server promised in ``hello``: then the rejection
    messages are shortened (to ``_SHORT_MESSAGE`` characters, then to nothing), never the
    index, id or code a producer acts on. Ids come from the producer's frame, which was at
    most ``max_bytes`` itself, so this is enough unless the events were tiny (a rejection
    without its message takes ~40 bytes plus its id: a 1 KiB frame of 500 one-byte events
    still gets a 20 KiB ack).
    """
    frame = {
        "type": "ack",
        "seq": seq,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
    }
    data = encode(frame)
    if max_bytes is None or len(data) <= max_bytes:
        return data
    for keep in (_SHORT_MESSAGE, 0):
        frame["rejected"] = [
            {**rejection, "message": _shorten(rejection["message"], keep)} for rejection in rejected
        ]
        data = encode(frame)
        if len(data) <= max_bytes:
            break
    return data


ACK_OVERHEAD: Final = 80
"""Bytes an ``ack`` takes besides its ``rejected`` entries, at most: the map, its six keys,
``"ack"``, three integers of up to 9 bytes each and the array's header."""

REJECTION_OVERHEAD: Final = 40
"""Bytes one ``rejected`` entry takes besides the text of its id, code and message, at most:
the map, its four keys, an index of up to 5 bytes and three strings' headers."""


def text_bytes(text: str | None) -> int:
    """An upper bound of the bytes ``text`` takes in UTF-8 (exact for ASCII, else 4 a
    character)."""
    if text is None:
        return 0
    return len(text) if text.isascii() else 4 * len(text)


def _shorten(message: str, keep: int) -> str:
    return message if len(message) <= keep else message[: max(keep - 1, 0)] + "…" * (keep > 0)


def error_frame(code: str, message: str) -> bytes:
    return encode({"type": "error", "code": code, "message": message})


def decode_frame(message: str | bytes) -> dict[Any, Any]:
    """The map a websocket message holds; :class:`Fault` ``malformed_frame`` if it holds none."""
    if isinstance(message, str):
        raise Fault(
            "malformed_frame",
            "a text frame was received; every frame must be a binary frame holding one msgpack map",
        )
    try:
        frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises ValueError subclasses, TypeError, ...
        raise Fault(
            "malformed_frame", f"the frame is not valid msgpack ({_reason(error)})"
        ) from None
    if not isinstance(frame, dict):
        raise Fault(
            "malformed_frame",
            f"the frame holds msgpack {_kind(frame)}; it must hold one map with a 'type' key",
        )
    return frame


def parse_batch(frame: dict[Any, Any], last_seq: int, max_batch: int) -> tuple[int, list[Any]]:
    """``(seq, events)`` of a producer frame; :class:`Fault` if it is not a good batch."""
    kind = frame.get("type")
    if kind != "batch":
        if "type" not in frame:
            why = "the frame has no 'type' key"
        elif isinstance(kind, str):
            why = f"unknown frame type {kind[:40]!r}"
            if kind in ("hello", "ack", "error"):
                why += " (the server sends that type; a producer does not)"
        else:
            why = f"the frame's 'type' is {_kind(kind)}, not a string"
        raise Fault("unknown_type", f"{why}; a producer sends only frames of type 'batch'")
    seq = frame.get("seq")
    if "seq" not in frame:
        raise Fault("bad_batch", "the batch has no 'seq' (an integer >= 0)")
    if type(seq) is not int or seq < 0:
        raise Fault("bad_batch", f"the batch's seq must be an integer >= 0, not {_kind(seq)}")
    if seq <= last_seq:
        raise Fault(
            "bad_batch",
            f"seq {seq} is not greater than the previous batch's seq {last_seq} on this"
            " connection; seq must be strictly increasing",
        )
    events = frame.get("events")
    if not isinstance(events, list):
        missing = "events" not in frame
        raise Fault(
            "bad_batch",
            f"batch seq {seq}: "
            + ("'events' is missing" if missing else f"'events' is {_kind(events)}")
            + f"; it must be an array of 1 to {max_batch} events",
        )
    if not events:
        raise Fault("bad_batch", f"batch seq {seq} has no events; send 1 to {max_batch}")
    if len(events) > max_batch:
        raise Fault(
            "bad_batch",
            f"batch seq {seq} has {len(events)} events; at most {max_batch} (max_batch in hello)",
        )
    return seq, events


def _kind(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    return f"a {type(value).__name__}"


def _reason(error: Exception) -> str:
    if isinstance(error, msgpack.ExtraData):
        return "extra bytes after the first msgpack value"
    if isinstance(error, UnicodeDecodeError):
        return "a string is not valid UTF-8"
    if isinstance(error, msgpack.StackError):
        return "nested too deeply"
    if isinstance(error, TypeError):
        return "a map key is an array or a map"
    text = str(error) or type(error).__name__
    return text if len(text) <= 80 else text[:80] + "..."
