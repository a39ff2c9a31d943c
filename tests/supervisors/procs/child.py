"""A child process for tests/supervisors/test_process.py: ``child.py MODE [ARG]``.

Once ready (after :func:`supervisors.notify_ready`) it prints ``up <pid>`` on stdout, so
a test can wait for each incarnation. It never reads its stdin unless MODE says so, so
only the kernel (``PR_SET_PDEATHSIG``) ends it when its supervisor's process dies.

MODE:
  ready [PAYLOAD]       ready, then wait for signals
  ignore-term           SIGTERM ignored, ready, then wait (only SIGKILL ends it)
  stdin-eof             ready, then exit 0 at EOF on stdin
  exit CODE             ready, then at SIGUSR2 exit with CODE
  signal NAME           ready, then at SIGUSR2 kill itself with signal NAME
  exit-before-ready N   exit with N without saying it is ready
  close-ready-fd        close the ready descriptor without a line, then wait
  never                 never ready
  rendezvous DIR N      write DIR/<pid>, then ready once DIR holds N such files (its
                        siblings started at the same time); never ready if they are not
"""

from __future__ import annotations

import os
import signal
import sys
import time

from supervisors import READY_FD_ENV, notify_ready


def up() -> None:
    sys.stdout.write(f"up {os.getpid()}\n")
    sys.stdout.flush()


def wait_forever() -> None:
    while True:
        signal.pause()


def rendezvous(where: str, count: int) -> None:
    """Wait (polling the directory: this process has no loop to wake) for ``count``
    processes to have arrived at ``where``, this one included."""
    open(os.path.join(where, str(os.getpid())), "w").close()
    while len(os.listdir(where)) < count:
        time.sleep(0.01)


def main(mode: str, arg: str = "", *more: str) -> None:
    if mode == "rendezvous":
        rendezvous(arg, int(more[0]))
        arg = ""
    if mode == "never":
        wait_forever()
    if mode == "exit-before-ready":
        sys.exit(int(arg))
    if mode == "close-ready-fd":
        os.close(int(os.environ[READY_FD_ENV]))
        wait_forever()
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("exit", "signal"):  # the test says when (it holds the ref by then)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    notify_ready(arg if mode == "ready" else "")
    up()
    if mode in ("exit", "signal"):
        signal.sigwait({signal.SIGUSR2})
        if mode == "exit":
            sys.exit(int(arg))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        os.kill(os.getpid(), signal.Signals[arg])
    if mode == "stdin-eof":
        sys.stdin.buffer.read()
        sys.exit(0)
    wait_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
