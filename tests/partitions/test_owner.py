"""The real owner process (``python -m meterd.partitions.owner``) under a supervisor, reached
as the gateway reaches it: hello, slices and their verdicts, HTTP queries, the tree, kill -9
and SIGTERM.

The layout is small so a start is quick: 4 partitions in 4 shards of 1, held by 2 owners;
owner 0 (the one run here) holds shards 0 and 2. Events are sent in slices as the gateway
builds them (each event's ``index`` its position in the producer's batch).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import supervisors as sv
from meterd.config import PartitionsConfig, load
from meterd.partitions import (
    Answer,
    BatchId,
    Channel,
    ChannelClosed,
    Hello,
    Query,
    Rejection,
    Slice,
    SliceEvent,
    TreeRequest,
    TreeSnapshot,
    Unavailable,
    UnixTransport,
    Verdicts,
    shard_files,
    shard_of,
)
from tests.supervisors.test_process import Run, Ups, ups

OWNER = str(Path(__file__).with_name("procs") / "real_owner.py")
WATCHDOG = 60  # real seconds; only a broken test gets near it
LAYOUT = PartitionsConfig(count=4, shard_size=1, owners=2)
ADMIN = "owner-test-admin-token"
AUTH = [["authorization", f"Bearer {ADMIN}"]]
MINUTE = 60_000
DAY = 24 * 60 * MINUTE
NOW = time.time_ns() // 1_000_000
T0 = NOW - 10 * MINUTE - NOW % MINUTE  # a minute boundary, well inside late_window


def accounts_in(shard: int, count: int) -> list[str]:
    found = [f"acct-{n}" for n in range(1000) if shard_of(f"acct-{n}", LAYOUT) == shard]
    return found[:count]


A, B = accounts_in(0, 2)  # shard 0
(C,) = accounts_in(2, 1)  # shard 2
(ELSEWHERE,) = accounts_in(1, 1)  # shard 1: owner 1's


def write_config(folder: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""
late_window = "1d"
dedupe_window = "1d"

[ingest]
listen = "127.0.0.1:18700"

[api]
listen = "127.0.0.1:18701"
admin_token = "{ADMIN}"

[store]
path = "var/meterd.sqlite3"

[partitions]
count = {LAYOUT.count}
shard_size = {LAYOUT.shard_size}
owners = {LAYOUT.owners}

[[producers]]
name = "platform"
token = "owner-test-platform-token"

[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["app"]
"""
    )
    return path


def ev(index: int, id: str, account: str, quantity: int = 1, at: int = T0) -> SliceEvent:
    return SliceEvent(index, id, account, "dyno.seconds", quantity, at, (("app", "web"),))


def a_slice(seq: int, shard: int, events: Sequence[SliceEvent], **more: Any) -> Slice:
    return Slice(BatchId("gw", 1, seq), shard, "platform", NOW, list(events), **more)


class Owner:
    """Owner 0 as a supervised process child, and a gateway's channel to it."""

    def __init__(self, sup: sv.Supervisor, lines: Ups, transport: UnixTransport) -> None:
        self.sup = sup
        self.lines = lines
        self.transport = transport
        self.channel: Channel | None = None
        self.ids = iter(range(1, 1_000_000))

    @property
    def ref(self) -> sv.ProcessRef:
        (info,) = self.sup.which_children()
        assert isinstance(info.ref, sv.ProcessRef)
        return info.ref

    async def connect(self) -> Hello:
        self.channel = await self.transport.connect(self.ref.ready)
        hello = await self.channel.receive()
        assert isinstance(hello, Hello)
        return hello

    async def send(self, *messages: Any) -> None:
        assert self.channel is not None
        for message in messages:
            await self.channel.send(message)

    async def receive(self) -> Any:
        assert self.channel is not None
        return await self.channel.receive()

    async def ask(self, message: Any) -> Any:
        await self.send(message)
        return await self.receive()

    async def http(
        self, shard: int, path: str, query: str = "", method: str = "GET"
    ) -> tuple[int, Any]:
        args = {"method": method, "path": path, "query": query, "headers": AUTH, "body": b""}
        answer = await self.ask(Query(next(self.ids), shard, "http", args))
        assert isinstance(answer, Answer)
        assert answer.error is None, answer.error
        return answer.value["status"], json.loads(answer.value["body"])

    async def usage(self, account: str) -> int:
        status, body = await self.http(
            shard_of(account, LAYOUT),
            f"/v1/accounts/{account}/usage",
            f"meter=dyno.seconds&from={T0 - DAY}&to={NOW + DAY}&window=day",
        )
        assert status == 200, body
        return sum(int(row["value"]) for row in body["rows"])


@asynccontextmanager
async def owner_zero(folder: Path) -> AsyncIterator[Owner]:
    config = write_config(folder)
    socket = str(folder / "owner-0.sock")
    argv = [sys.executable, OWNER, "--config", str(config), "--owner", "0", "--socket", socket]
    with trio.fail_after(WATCHDOG):
        async with ups() as lines, trio.open_nursery() as nursery:
            spec = sv.process_spec("owner-0", argv, stdout=lines.fd, start_timeout=WATCHDOG)
            sup = sv.Supervisor([spec], name="owners")
            run = Run(sup)
            await nursery.start(run)
            assert await lines.next() == sup.which_children()[0].ref.pid
            owner = Owner(sup, lines, UnixTransport())
            yield owner
            if owner.channel is not None:
                await owner.channel.aclose()
            sup.stop()
        assert run.error is None


async def test_the_owner_says_hello_answers_pings_trees_and_what_it_cannot_handle(
    tmp_path: Path,
) -> None:
    async with owner_zero(tmp_path) as owner:
        assert await owner.connect() == Hello("owner-0", owner.ref.pid, [0, 2])
        assert await owner.ask(Query(1, 0, "ping")) == Answer(1, value="pong")

        snapshot = await owner.ask(TreeRequest(2))
        assert isinstance(snapshot, TreeSnapshot)
        assert (snapshot.id, snapshot.owner, snapshot.pid) == (2, "owner-0", owner.ref.pid)
        tree = snapshot.tree
        assert (tree["name"], tree["strategy"]) == ("owner-0", "one_for_one")
        assert [cell["name"] for cell in tree["children"]] == ["shard-000", "shard-002"]
        for cell in tree["children"]:
            assert cell["strategy"] == "rest_for_one"
            assert [c["name"] for c in cell["children"]] == [
                "store-writer",
                "accounts",
                "deliveries",
            ]

        # Not this owner's shard, not a known op, not a gateway's message: answered, no crash.
        elsewhere = a_slice(1, 1, [ev(0, "x-1", ELSEWHERE)])
        answer = await owner.ask(elsewhere)
        assert isinstance(answer, Unavailable)
        assert (answer.batch, answer.shard) == (elsewhere.batch, 1)
        assert "does not hold shard 1" in answer.reason
        answer = await owner.ask(a_slice(2, 0, [ev(0, "x-2", C)]))  # C is in shard 2
        assert isinstance(answer, Unavailable)
        assert f"account {C!r} is in shard 2, not in shard 0" in answer.reason
        answer = await owner.ask(Query(3, 0, "usage"))
        assert isinstance(answer, Answer)
        assert answer.error is not None
        assert "does not answer op 'usage'" in answer.error
        answer = await owner.ask(Verdicts(BatchId("gw", 1, 1), 0, 1, 0))
        assert isinstance(answer, Answer)
        assert answer.error is not None
        assert "cannot handle a Verdicts message" in answer.error
        answer = await owner.ask(Query(4, 1, "http", {"method": "GET", "path": "/healthz"}))
        assert isinstance(answer, Answer)
        assert answer.error is not None
        assert "does not hold shard 1" in answer.error
        answer = await owner.ask(Query(5, 0, "http", {"method": "GET", "path": 7}))
        assert isinstance(answer, Answer)
        assert answer.error is not None
        assert "args.path" in answer.error
        assert await owner.ask(Query(6, 2, "ping")) == Answer(6, value="pong")  # still there


async def test_slices_get_verdicts_counted_exactly_with_their_indexes(tmp_path: Path) -> None:
    async with owner_zero(tmp_path) as owner:
        await owner.connect()
        old = NOW - 3 * DAY  # older than the dedupe window: time_out_of_range
        first = a_slice(
            1,
            0,
            [ev(0, "e1", A, 5), ev(2, "e2", B, 7), ev(3, "e1", B, 1), ev(5, "e3", A, 2)],
            rejected=[Rejection(1, "bad", "invalid_quantity", "quantity -1 is negative", A)],
        )
        other_shard = a_slice(1, 2, [ev(4, "e1", C, 11)])
        second = a_slice(
            2,
            0,
            [
                ev(0, "e1", A, 5),  # a re-send: duplicate
                ev(1, "e2", B, 8),  # same id, other quantity: id_conflict
                ev(2, "e4", A, 1, at=old),  # too old
                ev(3, "e5", B, 3),
                ev(4, "e5", B, 3),  # twice in one slice: the second is a duplicate
            ],
        )
        # Sent together: the owner answers each after its commit, in any order.
        await owner.send(first, other_shard, second)
        got = {}
        for _ in range(3):
            verdicts = await owner.receive()
            assert isinstance(verdicts, Verdicts)
            got[verdicts.batch.seq, verdicts.shard] = verdicts
        assert got[1, 0] == Verdicts(first.batch, 0, 4, 0)
        assert got[1, 2] == Verdicts(other_shard.batch, 2, 1, 0)
        verdicts = got[2, 0]
        assert (verdicts.accepted, verdicts.duplicates) == (1, 2)
        [conflict] = verdicts.id_conflicts
        assert (conflict.index, conflict.id, conflict.code, conflict.account) == (
            1,
            "e2",
            "id_conflict",
            B,
        )
        [too_old] = verdicts.rejected
        assert (too_old.index, too_old.id, too_old.code) == (2, "e4", "time_out_of_range")

        # What was accepted is what the shards' APIs count.
        assert await owner.usage(A) == 7
        assert await owner.usage(B) == 11
        assert await owner.usage(C) == 11
        status, events = await owner.http(0, f"/v1/accounts/{B}/events")
        assert status == 200
        assert [(e["id"], e["quantity"]) for e in events["events"]] == [
            ("e2", "7"),
            ("e1", "1"),
            ("e5", "3"),
        ]
        status, body = await owner.http(2, f"/v1/accounts/{A}/events")
        assert (status, body["error"]["code"]) == (404, "unknown_account")  # A is shard 0's


async def test_kill_9_after_verdicts_then_a_re_sent_slice_is_all_duplicates(
    tmp_path: Path,
) -> None:
    sent = [
        a_slice(1, 0, [ev(i, f"k{i}", A if i % 2 else B, i + 1) for i in range(50)]),
        a_slice(1, 2, [ev(50, "k50", C, 100)]),
    ]
    async with owner_zero(tmp_path) as owner:
        await owner.connect()
        await owner.send(*sent)
        answers = {(await owner.receive()).shard for _ in sent}
        assert answers == {0, 2}

        old_pid = owner.ref.pid
        owner.ref.send_signal(signal.SIGKILL)
        try:
            await owner.receive()
            raise AssertionError("the channel of a killed owner ends")
        except ChannelClosed:
            pass
        new_pid = await owner.lines.next()  # restarted by its supervisor
        assert new_pid != old_pid
        (info,) = owner.sup.which_children()
        assert info.restarts == 1

        hello = await owner.connect()
        assert (hello.pid, hello.shards) == (new_pid, [0, 2])
        await owner.send(*sent)  # the gateway's re-send of what it may not have acked
        resent = {}
        for _ in sent:
            verdicts = await owner.receive()
            assert isinstance(verdicts, Verdicts)
            resent[verdicts.shard] = verdicts
        assert resent[0] == Verdicts(sent[0].batch, 0, 0, 50)
        assert resent[2] == Verdicts(sent[1].batch, 2, 0, 1)
        assert await owner.usage(A) == sum(i + 1 for i in range(50) if i % 2)
        assert await owner.usage(B) == sum(i + 1 for i in range(50) if not i % 2)
        assert await owner.usage(C) == 100


async def test_sigterm_stops_the_owner_with_status_0_and_a_restart_recovers_its_windows(
    tmp_path: Path,
) -> None:
    async with owner_zero(tmp_path) as owner:
        await owner.connect()
        await owner.send(a_slice(1, 0, [ev(0, "s1", A, 3), ev(1, "s2", A, 4)]))
        assert await owner.receive() == Verdicts(BatchId("gw", 1, 1), 0, 2, 0)
        assert await owner.usage(A) == 7  # A's actor is awake, its windows checkpointed
        await owner.send(a_slice(2, 0, [ev(0, "s3", A, 5)]))  # applied, not checkpointed
        assert await owner.receive() == Verdicts(BatchId("gw", 1, 2), 0, 1, 0)

        ref = owner.ref
        ref.send_signal(signal.SIGTERM)
        exit = await ref.wait()
        assert exit.kind == "normal", exit  # exit status 0
        await owner.lines.next()  # a permanent child: started again
        await owner.connect()
        assert await owner.usage(A) == 12
        status, tree = await owner.http(0, "/v1/tree")
        assert status == 200
        assert tree["name"] == "shard-000"
        load_config = load(tmp_path / "config.toml")
        assert shard_files(load_config, 0).store.exists()


def test_a_socket_path_too_long_for_unix_is_refused_before_starting(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    socket = str(tmp_path / ("s" * 120))
    argv = ["--config", str(config), "--owner", "0", "--socket", socket]
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.partitions.owner", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ran.returncode == 2, ran.stderr
    assert "a Unix socket's path is at most 107: choose a shorter one" in ran.stderr
    assert not (tmp_path / "var").exists()  # nothing was started
