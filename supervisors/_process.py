"""OS processes as children (OTP's ports, erlexec): start, ready handshake, stop, exit reason.

A child spec made by :func:`process_spec` runs a program as a child process of the
supervisor's process. To the supervisor it is a child like any other (restart type,
restart intensity and escalation, strategies, ``kill_child``, ``stop_and_restart_child``,
backoff); these are the rules of the process itself.

Start
    ``argv`` is started with ``env`` (added to the supervisor's environment, or instead of
    it with ``inherit_env=False``) in ``cwd``; its stdin is a pipe the supervisor holds and
    never writes, its stdout and stderr are the supervisor's unless given. It is in a
    process group of its own, so a Ctrl-C at a terminal reaches the supervisor only, which
    stops its children in order.
Ready handshake
    The child says it is ready by writing one line to the file descriptor whose number is
    in its environment as ``SUPERVISORS_READY_FD`` (as s6's ``notification-fd``;
    :func:`notify_ready` does it for a Python child). The line, without its newline
    (UTF-8, at most 4 KiB), is the ready payload (``ProcessRef.ready``: say, the address
    it listens on). The start succeeds then, and only then; ``ready=False`` counts the
    child started once it is spawned.

    A child that is not ready within ``start_timeout`` seconds is killed (SIGKILL) and
    reaped, and so is one that closes that descriptor without a line; the start fails
    with :class:`ProcessStartError` (naming the process, its exit status or signal if it
    ended, and what to do), which the supervisor treats as any child's failed start: a
    :class:`StartError` at the first start, a restart attempt that failed (and counts
    toward the intensity) later.
Running
    The child's ref is a :class:`ProcessRef`: ``pid``, ``argv``, ``ready``, ``wait()``,
    ``send_signal()``. :func:`~._introspect.snapshot` shows the ``pid`` of a running one.
Stop
    When its supervisor terminates it (shutdown, a strategy, ``stop_and_restart_child``),
    the child is asked politely: ``stop_signal`` (SIGTERM; ``None``: none) and its stdin
    closed (a child reading it sees EOF); after the spec's ``shutdown`` grace it is sent
    SIGKILL. ``brutal_kill`` and ``kill_child`` send SIGKILL at once. Signals go through a
    pidfd, so a reused pid is never hit.
Exit reason
    Its end is the child's :class:`Exit`, with a :class:`ProcessExited` (pid, ``status``
    or ``signal``) as its ``error``:

    * exit status 0 -> ``normal``; any other status -> ``crash``;
    * killed by a signal nobody in the supervisor sent: SIGKILL -> ``killed``, any other
      signal -> ``crash`` (all three are abnormal: a transient child is restarted);
    * after a stop request, status 0, the stop signal, or 128 + the stop signal ->
      ``shutdown``; SIGKILL sent by the supervisor (grace over, ``brutal_kill``,
      ``kill_child``) -> ``killed``.
No orphans
    The child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``, set
    by a small exec shim, :data:`_SHIM`, which exits at once if the supervisor died
    before that call). So when the supervisor's process dies in any way, ``kill -9``
    included, its children die with it, also children that never read their stdin. The
    kernel ties that signal to the *thread* that spawned the child: it is spawned from the
    thread that runs the Trio loop (``subprocess.Popen``, which uses vfork here, then a
    pidfd to wait on it), not through ``trio.lowlevel.open_process``, which spawns from a
    worker thread; Trio ends idle worker threads after 10 s, and the kernel would then
    kill a healthy child. A child that starts processes of its own answers for them. If
    the supervisor's Trio task is cancelled (its nursery torn down without a stop), the
    child is killed and reaped before the task ends.

Linux only (pidfds, ``PR_SET_PDEATHSIG``). No log line carries ``env``, nor ``argv``
beyond the program's name: they may hold secrets.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Final

import trio

from ._exit import Exit
from ._log import logger
from ._protocols import Host, Incarnation
from ._spec import Backoff, ChildSpec, ChildType, Restart, Shutdown

#: The environment variable that tells a child which descriptor to write its ready line to.
READY_FD_ENV: Final = "SUPERVISORS_READY_FD"
#: The longest ready line read (without its newline).
MAX_READY_LINE: Final = 4096

_PR_SET_PDEATHSIG: Final = 1
#: How long a child that closed its ready descriptor without a line is given to be seen
#: ending by itself (then its exit status is reported) before it is killed.
_EXIT_WINDOW: Final = 1.0


class ProcessExited(Exception):
    """How an OS process ended: its exit ``status``, or the ``signal`` that killed it."""

    def __init__(self, name: str, pid: int, returncode: int) -> None:
        self.name = name
        self.pid = pid
        self.returncode = returncode
        self.status: int | None = returncode if returncode >= 0 else None
        self.signal: str | None = None if returncode >= 0 else _signal_name(-returncode)
        how = (
            f"exited with status {returncode}"
            if returncode >= 0
            else f"was killed by signal {self.signal}"
        )
        super().__init__(f"process {pid} ({name}) {how}")


class ProcessStartError(Exception):
    """A child process did not become ready: it is killed and reaped, and its start failed."""


def notify_ready(payload: str = "") -> bool:
    """In a child process: say it is ready (one line to ``$SUPERVISORS_READY_FD``).

    Returns False when not started by a supervisor with a ready handshake. The
    descriptor is closed and the variable removed, so the child's own children do not
    inherit them.
    """
    fd_text = os.environ.pop(READY_FD_ENV, None)
    if fd_text is None:
        return False
    if "\n" in payload or len(payload.encode()) > MAX_READY_LINE:
        raise ValueError(f"a ready payload is one line of at most {MAX_READY_LINE} bytes")
    fd = int(fd_text)
    try:
        data = payload.encode() + b"\n"
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    return True


class ProcessRef:
    """The handle of a running child process (its supervisor's ``ref`` for it)."""

    __slots__ = ("_incarnation",)

    def __init__(self, incarnation: ProcessIncarnation) -> None:
        self._incarnation = incarnation

    @property
    def pid(self) -> int:
        return self._incarnation.pid

    @property
    def argv(self) -> tuple[str, ...]:
        return self._incarnation.launcher.argv

    @property
    def ready(self) -> str:
        """What the child wrote on its ready line ('' without a handshake)."""
        return self._incarnation.ready_payload

    @property
    def alive(self) -> bool:
        return self._incarnation.sv_exit is None

    @property
    def exit(self) -> Exit | None:
        return self._incarnation.sv_exit

    async def wait(self) -> Exit:
        """Wait until the process has ended and been reaped; its exit reason."""
        return await self._incarnation._sv_wait_exit()

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` (through its pidfd); nothing once it has ended."""
        self._incarnation.signal(signum)

    def __repr__(self) -> str:
        return f"<ProcessRef pid={self.pid} {self._incarnation.launcher.name}>"


class ProcessLauncher:
    """Starts the incarnations of one OS-process child. See the module doc."""

    __slots__ = (
        "argv",
        "cwd",
        "env",
        "inherit_env",
        "name",
        "ready",
        "start_timeout",
        "stderr",
        "stdout",
        "stop_signal",
    )

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        ready: bool = True,
        start_timeout: float = 10.0,
        stop_signal: int | None = signal.SIGTERM,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv must be a non-empty sequence of str, not {argv!r}")
        if not (start_timeout > 0 and math.isfinite(start_timeout)):
            raise ValueError(f"start_timeout must be finite seconds > 0, not {start_timeout!r}")
        self.argv = tuple(argv)
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.ready = ready
        self.start_timeout = float(start_timeout)
        self.stop_signal = stop_signal
        self.stdout = stdout
        self.stderr = stderr
        self.name = _program_name(self.argv)

    async def launch(self, host: Host, child: object) -> Incarnation | None:
        incarnation = ProcessIncarnation(host, child, self)
        await host.nursery.start(incarnation.run)
        return incarnation

    def release(self, child: object) -> None:
        """A process child holds nothing between incarnations."""

    def __repr__(self) -> str:
        return f"ProcessLauncher({self.name!r})"


class ProcessIncarnation:
    """One run of a child process: spawned, ready, running, reaped."""

    __slots__ = (
        "_done",
        "_host",
        "_killed",
        "_pidfd",
        "_popen",
        "_stop_requested",
        "child",
        "launcher",
        "pid",
        "ready_payload",
        "ref",
        "sv_exit",
        "sv_started_at",
    )

    def __init__(self, host: Host, child: object, launcher: ProcessLauncher) -> None:
        self._host = host
        self.child = child
        self.launcher = launcher
        self._done = trio.Event()
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._killed = False
        self._stop_requested = False
        self.pid = 0
        self.ready_payload = ""
        self.ref: ProcessRef | None = None
        self.sv_exit: Exit | None = None
        self.sv_started_at = time.time()

    @property
    def sv_alive(self) -> bool:
        return self.sv_exit is None

    @property
    def sv_mailbox_depth(self) -> int:
        return 0

    @property
    def _desc(self) -> str:
        return f"process {self.pid} ({self.launcher.name})"

    # ---- the task that owns the process --------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ProcessRef]) -> None:
        ready_read = self._spawn()
        started = False
        try:
            if ready_read is not None:
                await self._await_ready(ready_read)
            self.ref = ProcessRef(self)
            self.sv_started_at = time.time()
            started = True
            logger.info(
                "process_started",
                program=self.launcher.name,
                pid=self.pid,
                ready=self.ready_payload or None,
            )
            task_status.started(self.ref)
            assert self._pidfd is not None
            await trio.lowlevel.wait_readable(self._pidfd)
        except BaseException:
            # Cancelled from outside (the supervisor's nursery is going away) or a failed
            # start: the process must not outlive this task.
            with trio.CancelScope(shield=True):
                await self._kill_and_reap()
            self._end(notify=started)
            raise
        self._reap()
        self._end(notify=True)

    def _spawn(self) -> trio.lowlevel.FdStream | None:
        """Fork and exec in this (the Trio) thread: see "No orphans" in the module doc."""
        launcher = self.launcher
        env = dict(os.environ) if launcher.inherit_env else {}
        env.update(launcher.env)
        env.pop(READY_FD_ENV, None)
        read_fd = write_fd = -1
        pass_fds: tuple[int, ...] = ()
        if launcher.ready:
            read_fd, write_fd = os.pipe()
            env[READY_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        try:
            if not _executable(launcher.argv[0], launcher.cwd, env.get("PATH")):
                raise FileNotFoundError(errno.ENOENT, "no such executable", launcher.argv[0])
            popen = subprocess.Popen(
                _shimmed(launcher.argv),
                stdin=subprocess.PIPE,
                stdout=launcher.stdout,
                stderr=launcher.stderr,
                env=env,
                cwd=launcher.cwd,
                pass_fds=pass_fds,
                process_group=0,
            )
        except OSError as error:
            if read_fd >= 0:
                os.close(read_fd)
            raise ProcessStartError(
                f"could not start {launcher.argv[0]!r} (cwd {launcher.cwd or os.getcwd()!r}): "
                f"{error.strerror or error}; check the child spec's argv and cwd"
            ) from error
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        self._popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        return trio.lowlevel.FdStream(read_fd) if launcher.ready else None

    async def _await_ready(self, stream: trio.lowlevel.FdStream) -> None:
        launcher = self.launcher
        line: bytes | None = None
        async with stream:
            with trio.move_on_after(launcher.start_timeout) as timer:
                line = await _read_line(stream)
        if line is not None:
            self.ready_payload = line.decode("utf-8", "replace")
            return
        # No line: too slow, or the descriptor closed (it ended, or closed it). It goes.
        with trio.CancelScope(shield=True):
            if not timer.cancelled_caught:
                # Closed: most likely on its way out (a process's descriptors close just
                # before it is seen ending). Give it a moment, so that its own exit status
                # is what gets reported.
                assert self._pidfd is not None
                with trio.move_on_at(min(timer.deadline, trio.current_time() + _EXIT_WINDOW)):
                    await trio.lowlevel.wait_readable(self._pidfd)
            ended_alone = self._reaped_or_none()
            await self._kill_and_reap()
        if ended_alone is not None:
            why = f"{ProcessExited(launcher.name, self.pid, ended_alone)} before it was ready"
        elif timer.cancelled_caught:
            why = (
                f"{self._desc} did not write its ready line to ${READY_FD_ENV} within "
                f"{launcher.start_timeout:g} s (start_timeout); it was killed"
            )
        else:
            why = f"{self._desc} closed ${READY_FD_ENV} without a ready line; it was killed"
        raise ProcessStartError(
            f"{why}; the program must call notify_ready() (or write a line to the descriptor "
            f"in ${READY_FD_ENV}) once it serves, or the spec's start_timeout be raised"
        )

    def _reaped_or_none(self) -> int | None:
        """The return code if the process has ended by itself already (reaping it), else None."""
        assert self._popen is not None
        if self._popen.returncode is None:
            self._popen.poll()
        return self._popen.returncode

    async def _kill_and_reap(self) -> None:
        if self._popen is None or self._pidfd is None:
            return
        if self._popen.returncode is None:
            self.signal(signal.SIGKILL)
            self._killed = True
            await trio.lowlevel.wait_readable(self._pidfd)
        self._reap()

    def _reap(self) -> None:
        assert self._popen is not None
        self._popen.wait()
        if self._popen.stdin is not None:
            self._popen.stdin.close()
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _end(self, *, notify: bool) -> None:
        if self.sv_exit is not None:
            return
        popen = self._popen
        returncode = popen.returncode if popen is not None else None
        if returncode is None:  # never spawned
            self.sv_exit = Exit("crash")
        else:
            self.sv_exit = _exit_of(
                ProcessExited(self.launcher.name, self.pid, returncode),
                stop_requested=self._stop_requested,
                killed=self._killed,
                stop_signal=self.launcher.stop_signal,
            )
            if notify:
                logger.debug(
                    "process_exited",
                    program=self.launcher.name,
                    pid=self.pid,
                    reason=str(self.sv_exit),
                )
        self._done.set()
        if notify:
            self._host._child_exited(self.child, self, self.sv_exit)

    # ---- what the supervisor asks of it (Incarnation) -------------------------------------

    def signal(self, signum: int) -> None:
        pidfd = self._pidfd
        if pidfd is None or self.sv_exit is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has ended; its exit is on its way
            signal.pidfd_send_signal(pidfd, signum)

    def _sv_request_stop(self, grace_deadline: float) -> None:
        self._stop_requested = True
        if self.launcher.stop_signal is not None:
            self.signal(self.launcher.stop_signal)
        popen = self._popen
        if popen is not None and popen.stdin is not None:
            popen.stdin.close()

    def _sv_kill(self) -> None:
        if self.sv_exit is None:
            self._killed = True
            self.signal(signal.SIGKILL)

    async def _sv_wait_exit(self) -> Exit:
        await self._done.wait()
        assert self.sv_exit is not None
        return self.sv_exit


def process_spec(
    id: Hashable,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    ready: bool = True,
    start_timeout: float = 10.0,
    stop_signal: int | None = signal.SIGTERM,
    stdout: int | None = None,
    stderr: int | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: Shutdown | None = None,
    significant: bool = False,
    backoff: Backoff | None = None,
    label: str | None = None,
) -> ChildSpec:
    """A worker child that runs ``argv`` as an OS process (see the module doc)."""
    return ChildSpec(
        id=id,
        start=ProcessLauncher(
            argv,
            env=env,
            inherit_env=inherit_env,
            cwd=cwd,
            ready=ready,
            start_timeout=start_timeout,
            stop_signal=stop_signal,
            stdout=stdout,
            stderr=stderr,
        ),
        restart=restart,
        shutdown=shutdown,
        type=ChildType.WORKER,
        significant=significant,
        backoff=backoff,
        label=label,
    )


# ---- helpers ---------------------------------------------------------------------------------


async def _read_line(stream: trio.lowlevel.FdStream) -> bytes | None:
    """One line (without its newline) from ``stream``; None at EOF before a newline."""
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(MAX_READY_LINE + 1)
        if not chunk:
            return None
        buffer += chunk
        end = buffer.find(b"\n")
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) > MAX_READY_LINE:
            return bytes(buffer[:MAX_READY_LINE])


def _exit_of(
    exited: ProcessExited, *, stop_requested: bool, killed: bool, stop_signal: int | None
) -> Exit:
    code = exited.returncode
    if killed and code == -signal.SIGKILL:
        return Exit("killed", exited)
    if stop_requested and (
        code == 0 or (stop_signal is not None and code in (-stop_signal, 128 + stop_signal))
    ):
        return Exit("shutdown", exited)
    if code == 0:
        return Exit("normal", exited)
    if code == -signal.SIGKILL:
        return Exit("killed", exited)
    return Exit("crash", exited)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _program_name(argv: tuple[str, ...]) -> str:
    """What logs call the program: its file name; for ``python [-m] x``, ``x``."""
    name = os.path.basename(argv[0])
    if name.startswith("python"):
        args = iter(argv[1:])
        for arg in args:
            if arg == "-m":
                return next(args, name)
            if not arg.startswith("-"):
                return os.path.basename(arg)
    return name


#: Run by the same Python (isolated, no site: ~10 ms) between the spawn and the child's
#: program: ask for SIGKILL when the spawning thread ends, exit if the supervisor's process
#: already has (it is no longer the parent), then become the program. In a shim rather
#: than a ``preexec_fn``: Popen then spawns with vfork, 0.2 ms, where a fork with a
#: ``preexec_fn`` copies the page tables of the whole supervisor (17 ms at 30 MB, 86 ms at
#: 330 MB measured here), with the event loop stalled meanwhile.
_SHIM: Final = (
    "import ctypes,os,sys\n"
    f"if ctypes.CDLL(None,use_errno=True).prctl({_PR_SET_PDEATHSIG},{int(signal.SIGKILL)},0,0,0):"
    "os._exit(126)\n"
    "if os.getppid()!=int(sys.argv[1]):os._exit(125)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


def _executable(program: str, cwd: str | os.PathLike[str] | None, path: str | None) -> bool:
    """Whether ``program`` can be run (the shim would only exit 1 saying it cannot)."""
    if "/" in program:
        return os.access(os.path.join(cwd or ".", program), os.X_OK)
    return shutil.which(program, path=path) is not None


def _shimmed(argv: tuple[str, ...]) -> list[str]:
    """``argv`` run through :data:`_SHIM` (see "No orphans" in the module doc)."""
    return [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()), *argv]


__all__ = [
    "MAX_READY_LINE",
    "READY_FD_ENV",
    "ProcessExited",
    "ProcessIncarnation",
    "ProcessLauncher",
    "ProcessRef",
    "ProcessStartError",
    "notify_ready",
    "process_spec",
]
