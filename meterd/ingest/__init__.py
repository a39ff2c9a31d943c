"""Ingest: the producer websocket endpoint (protocol.md §2).

* :mod:`meterd.ingest.server` — :class:`IngestServer`, the trio-websocket server at
  ``/v1/ingest``: auth, hello, pipelined batches, acks in order, faults, shutdown.
* :mod:`meterd.ingest.protocol` — the frames: decoding, the batch envelope, §2.4 faults.
* :mod:`meterd.ingest.validate` — one event's checks and the §2.3 rejection messages.
* :mod:`meterd.ingest.typed` — a batch frame decoded typed (msgspec), the old path behind.

Choices where protocol.md is silent, and the two error codes meterd adds
------------------------------------------------------------------------

Error codes added to §2.4 (an ``error`` frame, then close):

* ``unavailable``, close **1011**: an account's actor failed while making the batch durable
  (it crashed mid-batch, or the accounts layer could not account for every event). That
  batch is **not** acknowledged, nor any later one: re-send them on a new connection
  (idempotency makes it safe; events that did become durable come back as duplicates).
* ``shutting_down``, close **1001**: the daemon is stopping. Every batch read before was
  finished and acknowledged first; send the rest after reconnecting.

A producer should treat any ``error`` code it does not know like ``unavailable``.

Connection:

* The handshake must ask for ``/v1/ingest`` (a query string is ignored); another path is
  refused with 404. ``Authorization`` must appear once, ``Bearer <token>`` (scheme in any
  case); otherwise 401 with ``WWW-Authenticate: Bearer`` and a JSON body
  ``{"error": {"code": "unauthorized", "message": ...}}``. While shutting down: 503. The
  upgrade request must arrive within 10 s of connecting.
* On a fault (§2.4), batches read *before* the faulty frame are finished and acknowledged
  before the ``error`` frame; nothing after it is read. This holds for ``frame_too_large``
  too (see :mod:`meterd.ingest.server` for how). Violations of the websocket protocol
  itself (an unmasked frame, invalid UTF-8 in a text frame...) are closed by the websocket
  library with its own code (1002, 1007) and no ``error`` frame.
* ``max_frame_bytes`` is inclusive and counts the reassembled message (all fragments).
* Backpressure: with ``window`` batches read and not acknowledged the server stops reading.
  What it holds per connection is then bounded: ``window`` batches, one queued message and
  a 64 KiB read buffer (plus the kernel's socket buffers).

Frames and events:

* Keys of a batch frame other than ``type``, ``seq`` and ``events`` are ignored (room for
  later versions); an event's unknown keys are ``invalid_event``.
* A msgpack ``str`` that is not UTF-8, bytes after the map, and a map key that is an array
  or a map make the frame ``malformed_frame``.
* An event gets one rejection, for the first problem in the order: shape, ``id``,
  ``account``, ``meter``, ``quantity``, ``time``, ``properties``. A missing field is
  rejected with that field's code. A rejection carries the event's ``id`` whenever that
  ``id`` is a valid one (even when something else is wrong), else ``null``.
* ``quantity`` as a string: plain decimal notation with an optional exponent and sign
  (``"12.5"``, ``"1E-7"``; no spaces, separators or non-ASCII digits), at most 64
  characters and 40 digits written out in full, parsed exactly; ``"-0"`` is 0; booleans are
  not integers. For ``count`` meters the quantity is ignored whatever it holds and the event
  counts 1, so a re-send differing only in quantity is a duplicate, not a conflict.
* ``time`` is accepted in ``[now - late_window, now + 5 min]``, both ends included; ``now``
  is the server's clock when the batch is read. ``received_at`` is that same instant.
* ``properties``: ``nil`` means none; empty keys and values are allowed. Lengths are
  counted in characters (code points).
* Ordering: acks come in ``seq`` order although batches run concurrently. On one
  connection, a batch holding an ``(account, id)`` that an earlier in-flight batch holds
  waits for it, so the first *sent* copy decides and a different later copy is the
  ``id_conflict``. Across connections, whichever copy reaches the account first decides.

Decoding: :mod:`meterd.ingest.typed` decodes a batch frame typed, in C (msgspec Structs),
and checks its events a field at a time over the batch; any frame it does not accept whole
goes the old way (msgpack, then :meth:`~meterd.ingest.validate.EventValidator.validate_batch`),
which gives every fault and rejection, so producers see the same verdicts either way.
``python -m meterd.bench.validate`` measures both paths.
"""

from meterd.ingest.server import IngestServer, IngestStats

__all__ = ["IngestServer", "IngestStats"]
