"""The real owner (``python -m meterd.partitions.owner ARGS``) that also prints ``up <pid>``
on stdout once it said it is ready, so a test waits for an incarnation on a pipe
(tests/supervisors/test_process.py's ``Ups``) instead of polling."""

from __future__ import annotations

import os
import sys

import supervisors
from meterd.partitions import owner

_notify_ready = supervisors.notify_ready


def _notify_and_say_up(payload: str = "") -> bool:
    told = _notify_ready(payload)
    sys.stdout.write(f"up {os.getpid()}\n")
    sys.stdout.flush()
    return told


if __name__ == "__main__":
    supervisors.notify_ready = _notify_and_say_up
    sys.exit(owner.main(sys.argv[1:]))
