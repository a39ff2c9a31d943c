"""Every benchmark of meterd and of ``supervisors``, one module each (``meterd bench NAME``).

Figures, never pass/fail results; each runs its peer or baseline in the same command.
docs/benchmarks.md lists them with their pages: :mod:`~meterd.bench.ingest` (end to end over
the producer websocket, against a minimal baseline server), :mod:`~meterd.bench.accounts`,
:mod:`~meterd.bench.supervisors` (against triotp, which :mod:`~meterd.bench.triotp_env`
installs in its own virtualenv to run ``peer_triotp.py``), the hot path piece by piece
(:mod:`~meterd.bench.validate`, :mod:`~meterd.bench.writer`, :mod:`~meterd.bench.deliver`,
:mod:`~meterd.bench.pages`, :mod:`~meterd.bench.store`), :mod:`~meterd.bench.retention`,
:mod:`~meterd.bench.rating` and :mod:`~meterd.bench.floor` (an owner's CPU against its rate).
"""
