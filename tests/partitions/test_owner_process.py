"""The pieces together: an owner process under a supervisor, reached over the transport.

A stand-in owner (``procs/stub_owner.py``) is a process child whose ready line is its
socket's path; the test, as a gateway, connects there, sends a slice and gets verdicts,
then kills the owner with SIGKILL: the channel ends, the supervisor starts a new owner at
the same path (the stale socket replaced), and the gateway reconnects to it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

import supervisors as sv
from meterd.partitions import (
    BatchId,
    ChannelClosed,
    Hello,
    Slice,
    SliceEvent,
    TreeRequest,
    TreeSnapshot,
    UnixTransport,
    Verdicts,
)
from tests.supervisors.test_process import Run, ups

OWNER = str(Path(__file__).with_name("procs") / "stub_owner.py")
WATCHDOG = 30


def a_slice(seq: int) -> Slice:
    events = [SliceEvent(i, f"ev-{seq}-{i}", "acme", "dyno.seconds", 1, 0) for i in range(3)]
    return Slice(BatchId("gw", 1, seq), 5, "billing", 0, events)


async def test_an_owner_process_serves_slices_and_is_reached_again_after_kill_9(
    tmp_path: Path,
) -> None:
    address = str(tmp_path / "owner-1.sock")
    transport = UnixTransport()
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, trio.open_nursery() as nursery:
            spec = sv.process_spec(
                "owner-1", [sys.executable, OWNER, address, "owner-1", "4", "5"], stdout=lines.fd
            )
            sup = sv.Supervisor([spec], name="owners")
            run = Run(sup)
            await nursery.start(run)
            (info,) = sup.which_children()
            ref = info.ref
            assert isinstance(ref, sv.ProcessRef)
            assert ref.ready == address  # the ready line says where it serves
            assert await lines.next() == ref.pid

            channel = await transport.connect(ref.ready)
            assert await channel.receive() == Hello("owner-1", ref.pid, [4, 5])
            await channel.send(a_slice(1))
            assert await channel.receive() == Verdicts(BatchId("gw", 1, 1), 5, 3, 0)
            await channel.send(TreeRequest(7))
            snapshot = await channel.receive()
            assert isinstance(snapshot, TreeSnapshot)
            assert snapshot.pid == ref.pid

            os.kill(ref.pid, signal.SIGKILL)
            with pytest.raises(ChannelClosed):
                await channel.receive()
            new_pid = await lines.next()  # restarted by its supervisor
            assert new_pid != ref.pid
            (info,) = sup.which_children()
            assert info.restarts == 1
            assert sv.snapshot(sup)["children"][0]["pid"] == new_pid

            channel = await transport.connect(info.ref.ready)
            assert await channel.receive() == Hello("owner-1", new_pid, [4, 5])
            await channel.send(a_slice(1))  # the gateway's re-send
            assert await channel.receive() == Verdicts(BatchId("gw", 1, 1), 5, 3, 0)
            await channel.aclose()
            sup.stop()
        assert run.error is None
