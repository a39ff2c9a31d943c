"""OS processes as supervised children (``supervisors._process``), with real processes.

The children are ``procs/child.py`` (one mode per behaviour). Each incarnation prints
``up <pid>`` on a pipe the test reads once it is ready, so a test waits for a restart by
reading that line (never by sleeping); a test that hangs fails through ``fail_after``.
Tests about grace periods and start timeouts run on a mock clock: virtual time is moved
(or jumps) past the deadline, so they take no real seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import supervisors as sv
from meterd.api.answers import TreeNode

PROCS = Path(__file__).with_name("procs")
CHILD = str(PROCS / "child.py")
TREE = str(PROCS / "tree.py")
WATCHDOG = 20  # real seconds; only a broken test gets near it


class Ups:
    """The ``up <pid>`` lines of the children whose stdout is :attr:`fd`."""

    def __init__(self) -> None:
        read_fd, self.fd = os.pipe()
        self._stream = trio.lowlevel.FdStream(read_fd)
        self._buffer = b""

    async def next(self) -> int:
        """The pid of the next incarnation that says it is up, once its supervisor knows.

        It wrote its ready line before this one, so what is left for its supervisors to
        do needs no more input: once every task is blocked they have done it.
        """
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            assert chunk, "the children's stdout closed"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        word, pid = line.split()
        assert word == b"up"
        await trio.testing.wait_all_tasks_blocked()
        return int(pid)

    async def aclose(self) -> None:
        os.close(self.fd)
        await self._stream.aclose()


@asynccontextmanager
async def ups() -> AsyncIterator[Ups]:
    lines = Ups()
    try:
        yield lines
    finally:
        await lines.aclose()


def child(id: str, mode: str, *args: str, ups: Ups | None = None, **options: Any) -> sv.ChildSpec:
    return sv.process_spec(
        id, [sys.executable, CHILD, mode, *args], stdout=ups.fd if ups else None, **options
    )


def exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def killed_at_exit(*pids: int) -> Iterator[None]:
    """Whatever the test's outcome, leave no process behind."""
    try:
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Run:
    """A supervisor run in the background; how it ended."""

    def __init__(self, sup: sv.Supervisor) -> None:
        self.sup = sup
        self.ended = trio.Event()
        self.error: BaseException | None = None

    async def __call__(self, *, task_status: trio.TaskStatus[Any]) -> None:
        try:
            await self.sup.run(task_status=task_status)
        except sv.SupervisorError as error:
            self.error = error
        finally:
            self.ended.set()


@asynccontextmanager
async def running(sup: sv.Supervisor) -> AsyncIterator[Run]:
    run = Run(sup)
    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        try:
            yield run
        finally:
            sup.stop()


def info(sup: sv.SupervisorCore, id: str) -> sv.ChildInfo:
    return next(c for c in sup.which_children() if c.id == id)


# ---- start and ready -----------------------------------------------------------------------


async def test_a_process_child_starts_once_ready_and_the_tree_shows_its_pid() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
            ref = await run.sup.start_child(child("owner", "ready", "/tmp/owner.sock", ups=lines))
            assert isinstance(ref, sv.ProcessRef)
            assert ref.ready == "/tmp/owner.sock"  # its ready line
            assert await lines.next() == ref.pid  # it said so after it was ready
            assert exists(ref.pid)
            tree = sv.snapshot(run.sup)
            node = tree["children"][0]
            assert node["name"] == "owner"
            assert node["status"] == "running"
            assert node["pid"] == ref.pid
            # /v1/tree's model reads it (meterd's API; the library does not import meterd)
            assert msgspec.convert(tree, TreeNode).children[0].pid == ref.pid
        assert not exists(ref.pid)  # the stop took it down
        assert ref.exit is not None
        assert ref.exit.kind == "shutdown"


async def test_a_child_that_never_gets_ready_fails_its_start_and_is_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = sv.Supervisor([child("slow", "never", start_timeout=3)], name="root")
    started = trio.current_time()
    with pytest.raises(sv.StartError) as caught:
        await sup.run()
    assert trio.current_time() - started == pytest.approx(3)  # virtual seconds
    reason = caught.value.reason
    assert isinstance(reason, sv.ProcessStartError)
    assert "did not write its ready line" in str(reason)
    assert "within 3 s (start_timeout); it was killed" in str(reason)
    pid = int(str(reason).split()[1])
    assert not exists(pid)


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        (["exit-before-ready", "7"], "exited with status 7 before it was ready"),
        (["close-ready-fd"], "closed $SUPERVISORS_READY_FD without a ready line; it was killed"),
    ],
)
async def test_a_child_that_ends_or_closes_before_ready_fails_its_start(
    mode: list[str], said: str
) -> None:
    sup = sv.Supervisor([child("c", *mode, start_timeout=WATCHDOG)], name="root")
    with trio.fail_after(WATCHDOG), pytest.raises(sv.StartError) as caught:
        await sup.run()
    assert said in str(caught.value.reason)


async def test_a_program_that_does_not_exist_fails_its_start() -> None:
    spec = sv.process_spec("c", ["/nonexistent/owner"])
    with pytest.raises(sv.StartError) as caught:
        await sv.Supervisor([spec], name="root").run()
    assert "could not start '/nonexistent/owner'" in str(caught.value.reason)
    assert "check the child spec's argv and cwd" in str(caught.value.reason)


async def test_start_together_starts_a_group_at_once_and_the_next_child_after_all(
    tmp_path: Path,
) -> None:
    """Three processes that are ready only once all three run (a rendezvous in a
    directory): one after another, the first would never be ready; together they are,
    and the child after the group starts once every one of them is."""
    where = tmp_path / "met"
    where.mkdir()
    after = trio.Event()

    async def last(*, task_status: trio.TaskStatus[None]) -> None:
        assert len(os.listdir(where)) == 3  # every process of the group had arrived
        after.set()
        task_status.started()
        await trio.sleep_forever()

    group = [
        child(f"p{k}", "rendezvous", str(where), "3", start_timeout=WATCHDOG) for k in range(3)
    ]
    specs = [*group, sv.task_spec("after", last)]
    sup = sv.Supervisor(specs, name="root", start_together=[["p0", "p1", "p2"]])
    with trio.fail_after(WATCHDOG):
        async with running(sup):
            assert after.is_set()
            pids = [info(sup, f"p{k}").ref.pid for k in range(3)]
            assert sorted(pids) == sorted(int(name) for name in os.listdir(where))
            assert [c.id for c in sup.which_children()] == ["p0", "p1", "p2", "after"]
    assert not any(exists(pid) for pid in pids)


async def test_a_failed_start_in_a_group_stops_every_child_started_and_names_the_first(
    tmp_path: Path,
) -> None:
    """One of the group exits before it is ready: the others' starts are still waited
    for, then every child started (the one before the group too) is stopped in reverse
    order, and the start fails naming the first child of the group that failed."""
    where = tmp_path / "met"
    where.mkdir()
    order: list[str] = []

    async def first(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            order.append("first stopped")

    specs = [
        sv.task_spec("first", first),
        child("a", "rendezvous", str(where), "2", start_timeout=WATCHDOG),
        child("b", "exit-before-ready", "3", start_timeout=WATCHDOG),
        child("c", "rendezvous", str(where), "2", start_timeout=WATCHDOG),
        child("never", "never"),
    ]
    sup = sv.Supervisor(specs, name="root", start_together=[["a", "b", "c"]])
    with trio.fail_after(WATCHDOG), pytest.raises(sv.StartError) as caught:
        await sup.run()
    assert caught.value.child_id == "b"
    assert "exited with status 3 before it was ready" in str(caught.value.reason)
    assert order == ["first stopped"]
    pids = [int(name) for name in os.listdir(where)]
    assert len(pids) == 2  # a and c ran (and met), then were stopped
    assert not any(exists(pid) for pid in pids)


def test_start_together_names_consecutive_children_of_its_supervisor() -> None:
    specs = [sv.task_spec(name, _forever) for name in ("a", "b", "c")]
    for groups, said in (
        ([["a", "x"]], "names no child 'x'"),
        ([["a", "c"]], "is not consecutive"),
        ([["a", "b"], ["b", "c"]], "in two groups"),
    ):
        with pytest.raises(sv.SpecError, match=said):
            sv.Supervisor(specs, start_together=groups)
    sv.Supervisor(specs, start_together=[["b", "a"], ["c"]])  # any order within a group


async def _forever(*, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await trio.sleep_forever()


async def test_a_child_without_handshake_is_started_once_spawned() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
            ref = await run.sup.start_child(child("c", "ready", ups=lines, ready=False))
            assert ref.ready == ""
            assert await lines.next() == ref.pid


# ---- kill -9, restarts, intensity ----------------------------------------------------------


async def test_kill_9_of_a_child_restarts_it_and_counts_the_restart() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
            first = await run.sup.start_child(child("owner", "ready", ups=lines))
            assert await lines.next() == first.pid
            os.kill(first.pid, signal.SIGKILL)
            second = await lines.next()
            assert second != first.pid
            assert (await first.wait()).kind == "killed"
            found = info(run.sup, "owner")
            assert found.ref.pid == second
            assert found.restarts == 1
            (record,) = found.history
            assert record.kind == "killed"
            assert record.error_type == "ProcessExited"
            assert record.message == f"process {first.pid} (child.py) was killed by signal SIGKILL"
            assert run.sup.restart_counts["exit"] == 1


async def test_a_child_killed_again_and_again_escalates_past_the_intensity() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines:
            inner = sv.Supervisor(
                [child("owner", "ready", ups=lines)],
                name="owners",
                max_restarts=2,
                max_seconds=3600,
            )
            outer = sv.Supervisor([inner.as_child()], name="root", max_restarts=5, max_seconds=60)
            async with running(outer) as run:
                pid = await lines.next()
                for _ in range(2):  # two restarts are within the intensity
                    os.kill(pid, signal.SIGKILL)
                    pid = await lines.next()
                assert info(inner, "owner").restarts == 2
                assert info(outer, "owners").restarts == 0
                os.kill(pid, signal.SIGKILL)  # the third is one too many: owners gives up,
                pid = await lines.next()  # and root starts it (and its child) again
                found = info(outer, "owners")
                assert found.restarts == 1
                (record,) = found.history
                assert record.error_type == "RestartIntensityExceeded"
                assert info(inner, "owner").restarts == 0  # a fresh run of owners
                assert info(inner, "owner").ref.pid == pid
            assert run.error is None


async def test_a_standalone_supervisor_gives_up_on_a_process_child_like_any_child() -> None:
    sup = sv.Supervisor([], name="owners", max_restarts=1, max_seconds=3600)
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sup) as run:
            await sup.start_child(child("owner", "ready", ups=lines))
            os.kill(await lines.next(), signal.SIGKILL)
            os.kill(await lines.next(), signal.SIGKILL)
            await run.ended.wait()
    assert isinstance(run.error, sv.RestartIntensityExceeded)
    assert run.error.child_id == "owner"


async def test_kill_child_is_killed_and_restarted() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
            ref = await run.sup.start_child(child("owner", "ready", ups=lines))
            await lines.next()
            await run.sup.kill_child("owner")
            exit = await ref.wait()
            assert exit.kind == "killed"
            assert isinstance(exit.error, sv.ProcessExited)
            assert exit.error.signal == "SIGKILL"
            assert await lines.next() != ref.pid
            assert info(run.sup, "owner").restarts == 1


# ---- shutdown --------------------------------------------------------------------------------


async def test_a_child_that_ignores_sigterm_is_killed_when_its_grace_runs_out(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
        ref = await run.sup.start_child(child("stubborn", "ignore-term", ups=lines, shutdown=5))
        await lines.next()  # SIGTERM is ignored from here on
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.sup.terminate_child, "stubborn")
            await trio.testing.wait_all_tasks_blocked()
            assert exists(ref.pid)  # SIGTERM sent, ignored; the clock stands still
            assert ref.alive
            mock_clock.jump(5)  # the grace runs out: SIGKILL
        exit = await ref.wait()
        assert exit.kind == "killed"
        assert isinstance(exit.error, sv.ProcessExited)
        assert exit.error.signal == "SIGKILL"
        assert not exists(ref.pid)


@pytest.mark.parametrize(
    ("mode", "stop_signal", "ended_by"),
    [("ready", signal.SIGTERM, "SIGTERM"), ("stdin-eof", None, None)],
)
async def test_a_polite_child_stops_within_its_grace(
    mock_clock: trio.testing.MockClock, mode: str, stop_signal: int | None, ended_by: str | None
) -> None:
    """SIGTERM, or (with ``stop_signal=None``) EOF on its stdin: it ends before any time
    passes (the mock clock stands still), so its exit is ``shutdown``."""
    async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
        spec = child("c", mode, ups=lines, shutdown=5, stop_signal=stop_signal)
        ref = await run.sup.start_child(spec)
        await lines.next()
        await run.sup.terminate_child("c")
        exit = await ref.wait()
        assert exit.kind == "shutdown"
        assert isinstance(exit.error, sv.ProcessExited)
        assert exit.error.signal == ended_by
        assert info(run.sup, "c").status is sv.ChildStatus.STOPPED


# ---- exit reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "kind", "status", "signal_name"),
    [
        (["exit", "0"], "normal", 0, None),
        (["exit", "3"], "crash", 3, None),
        (["signal", "SIGABRT"], "crash", None, "SIGABRT"),
        (["signal", "SIGKILL"], "killed", None, "SIGKILL"),
    ],
)
async def test_the_exit_reason_is_the_exit_status_or_the_signal(
    mode: list[str], kind: str, status: int | None, signal_name: str | None
) -> None:
    with trio.fail_after(WATCHDOG):
        async with running(sv.Supervisor([], name="root")) as run:
            spec = child("c", *mode, restart=sv.Restart.TEMPORARY)
            ref = await run.sup.start_child(spec)
            ref.send_signal(signal.SIGUSR2)  # now end as the mode says
            exit = await ref.wait()
    assert exit.kind == kind
    assert exit.clean is (kind == "normal")
    error = exit.error
    assert isinstance(error, sv.ProcessExited)
    assert (error.pid, error.status, error.signal) == (ref.pid, status, signal_name)


async def test_a_transient_child_is_restarted_after_a_nonzero_status_only() -> None:
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, running(sv.Supervisor([], name="root")) as run:
            transient = sv.Restart.TRANSIENT
            await run.sup.start_child(child("bad", "exit", "3", ups=lines, restart=transient))
            os.kill(await lines.next(), signal.SIGUSR2)
            await lines.next()  # restarted after status 3
            await run.sup.terminate_child("bad")
            ref = await run.sup.start_child(child("good", "exit", "0", restart=transient))
            ref.send_signal(signal.SIGUSR2)
            assert (await ref.wait()).kind == "normal"
            await trio.testing.wait_all_tasks_blocked()  # the supervisor handled the exit
            assert info(run.sup, "good").status is sv.ChildStatus.STOPPED
            assert info(run.sup, "good").restarts == 0


# ---- no orphans ------------------------------------------------------------------------------


async def test_the_supervisors_process_killed_9_leaves_no_orphan() -> None:
    """Neither child reads its stdin and one ignores SIGTERM: only the kernel's
    parent-death signal can end them when their supervisor's process is killed -9."""
    with trio.fail_after(WATCHDOG):
        parent = await trio.lowlevel.open_process([sys.executable, TREE], stdout=subprocess.PIPE)
        assert parent.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await parent.stdout.receive_some()
            assert chunk, "tree.py ended before its children were ready"
            line += chunk
        pids = [int(p) for p in line.split()[1:]]
        with killed_at_exit(*pids):
            pidfds = [os.pidfd_open(pid) for pid in pids]
            assert all(exists(pid) for pid in pids)
            parent.kill()
            await parent.wait()
            for pidfd in pidfds:  # readable once that process has ended
                await trio.lowlevel.wait_readable(pidfd)
                os.close(pidfd)
            assert not any(exists(pid) for pid in pids)
