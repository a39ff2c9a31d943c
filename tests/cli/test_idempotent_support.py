"""``meterd adjust`` and ``meterd void`` are safe to retry: one idempotency key per command,
sent again on their own retries when an answer is lost, and ``--idempotency-key`` to re-run a
command whose outcome is unknown. Against a real daemon; a lost answer is made by letting the
request reach the daemon and then failing it as the network would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meterd.cli import support
from meterd.cli._api import Api, ApiError
from meterd.isotime import format_time
from tests.cli.support_daemon import T0, Operator, event
from tests.procs.daemon import DaemonProcess, running_daemon

DAY = 86_400_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("idem-cli")) as process:
        yield process


@pytest.fixture(scope="module")
def op(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Operator:
    operator = Operator(daemon)
    operator.produce(
        tmp_path_factory.mktemp("events"),
        [
            *(event(f"a{n}", f"idem-{n}", T0, 10, size="std") for n in range(4)),
            event("v1", "idem-void", T0, 7, size="std"),
        ],
    )
    return operator


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "RETRY_DELAYS", (0.0, 0.0))


def lose_answers(monkeypatch: pytest.MonkeyPatch, count: int, how: str) -> list[dict[str, str]]:
    """The first ``count`` POSTs reach the daemon, then their answer is lost (``how``: no
    answer, or a 503 from a node in between); the headers of every POST sent."""
    sent: list[dict[str, str]] = []
    post = Api.post

    def losing(self: Api, path: str, body: Any = None, headers: Any = None) -> dict[str, Any]:
        sent.append(dict(headers or {}))
        answer = post(self, path, body, headers)
        if len(sent) <= count:
            if how == "timeout":
                raise ApiError("the API did not answer within 10 s", unreachable=True)
            raise ApiError("shard moved (HTTP 503 unavailable)", http_status=503)
        return answer

    monkeypatch.setattr(Api, "post", losing)
    return sent


def adjustments(daemon: DaemonProcess, account: str) -> list[dict[str, Any]]:
    with httpx.Client(
        base_url=daemon.api_url,
        headers={"Authorization": f"Bearer {daemon.config.api.admin_token}"},
    ) as client:
        answer = client.get(
            f"/v1/accounts/{account}/adjustments", params={"from": 0, "to": T0 + 40 * DAY}
        )
        return list(answer.json()["adjustments"])


def adjust_args(account: str, *more: str) -> list[str]:
    day = format_time(T0 - T0 % DAY)[:10]
    return [
        "adjust", account, "--meter", "dyno.seconds", "--kind", "credit", "--quantity", "3",
        "--on", day, "--dim", "size=std", "--by", "alice", "--reason", "outage", "--yes", *more,
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["timeout", "503"])
def test_adjust_retries_a_lost_answer_with_its_key_and_records_once(
    op: Operator, daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    account = "idem-0" if how == "timeout" else "idem-1"
    sent = lose_answers(monkeypatch, 2, how)
    done = op.run(*adjust_args(account))
    assert done.exit_code == 0, (done.output, done.stderr)
    assert len(sent) == 3
    keys = {headers["Idempotency-Key"] for headers in sent}
    assert len(keys) == 1  # one key per command, reused on its retries
    assert "sending it again with the same idempotency key" in done.stderr
    assert "already recorded (an earlier run with this idempotency key) adjustment #" in (
        done.stdout
    )
    [recorded] = adjustments(daemon, account)
    assert recorded["idempotency_key"] == keys.pop()


def test_adjust_gives_up_naming_the_key_and_a_rerun_with_it_records_nothing_more(
    op: Operator, daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = lose_answers(monkeypatch, 10, "timeout")
    failed = op.run(*adjust_args("idem-2"))
    assert failed.exit_code == 1
    assert len(sent) == 3  # the first try and the two retries of RETRY_DELAYS
    key = sent[0]["Idempotency-Key"]
    assert f"re-run the command with --idempotency-key {key}" in failed.stderr
    monkeypatch.undo()
    rerun = op.run(*adjust_args("idem-2", "--idempotency-key", key))
    assert rerun.exit_code == 0, rerun.output
    assert "already recorded" in rerun.stdout
    assert len(adjustments(daemon, "idem-2")) == 1
    # another quantity under that key is refused, naming the field
    other = adjust_args("idem-2", "--idempotency-key", key)
    other[other.index("--quantity") + 1] = "4"
    refused = op.run(*other)
    assert refused.exit_code == 1
    assert "idempotency_conflict" in refused.stderr
    assert "'quantity'" in refused.stderr


def test_void_retries_with_its_key_instead_of_answering_already_void(
    op: Operator, daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = lose_answers(monkeypatch, 1, "503")
    done = op.run("void", "idem-void", "v1", "--by", "bob", "--reason", "twice", "--yes")
    assert done.exit_code == 0, (done.output, done.stderr)
    assert len({headers["Idempotency-Key"] for headers in sent}) == 1
    assert "already recorded (an earlier run with this idempotency key) void #" in done.stdout


def test_a_bad_key_is_refused_before_anything_is_sent(op: Operator) -> None:
    refused = op.run(*adjust_args("idem-3", "--idempotency-key", " padded"))
    assert refused.exit_code == 2
    assert "--idempotency-key" in refused.stderr
