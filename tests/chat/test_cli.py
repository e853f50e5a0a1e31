"""`mesh chat ...` with the real `mesh` command against real `mesh up` processes,
including kill -9 of the sender with 20 messages queued."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.chat.store import DB_FILE, ChatStore
from tests.chat.procs import ChatProcess, mesh, node_key

pytestmark = pytest.mark.timeout(300)


def _until(what: str, probe: object, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = probe()  # type: ignore[operator]
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not so after {timeout} s (last {last!r})")


def history(data: Path, contact: str) -> list[dict[str, object]]:
    done = mesh(data, "chat", "history", contact, "--json", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ChatProcess, ChatProcess]]:
    with contextlib.ExitStack() as running:
        a = ChatProcess(tmp_path / "a", "--listen", "tcp://127.0.0.1:0")
        running.callback(a.stop)
        b = ChatProcess(tmp_path / "b", "--peer", a.listen_uri)
        running.callback(b.stop)
        yield a, b


def test_send_wait_history_requests_accept_search_read(
    pair: tuple[ChatProcess, ChatProcess],
) -> None:
    a, b = pair
    ka, kb = node_key(a.data), node_key(b.data)
    done = mesh(a.data, "chat", "send", f"{kb}@mesh", "hello from a", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    mid = done.stdout.strip()
    assert len(mid) == 32
    piped = mesh(a.data, "chat", "send", kb, "-", stdin="line one\nline two\n")
    assert piped.returncode == 0, piped.stderr

    got = _until("both at B", lambda: len(history(b.data, ka)) == 2 and history(b.data, ka))
    assert isinstance(got, list)
    assert [m["body"] for m in got] == ["hello from a", "line one\nline two"]
    first = got[0]
    assert {k: first[k] for k in ("id", "direction", "from", "to", "state")} == {
        "id": mid, "direction": "in", "from": ka, "to": kb, "state": "received",
    }  # fmt: skip
    assert isinstance(first["ts"], float)
    assert history(a.data, kb)[0]["state"] == "sent"  # stored at B; B sends no receipt yet

    requests = json.loads(mesh(b.data, "chat", "requests", "--json").stdout)
    assert [r["key"] for r in requests] == [ka]
    found = json.loads(mesh(b.data, "chat", "search", "line", "--json").stdout)
    assert [m["id"] for m in found] == [got[1]["id"]]
    assert mesh(b.data, "chat", "history", ka, "--search", "hello", "--json").returncode == 0
    read = mesh(b.data, "chat", "read", ka)
    assert read.returncode == 0 and "marked 2 read" in read.stdout
    assert all(m["state"] == "sent" for m in history(a.data, kb))  # no receipt to a stranger
    accepted = mesh(b.data, "chat", "accept", ka)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(mesh(b.data, "chat", "requests", "--json").stdout) == []
    again = mesh(a.data, "chat", "send", kb, "now a contact", "--wait", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    _until("delivered at A", lambda: history(a.data, kb)[-1]["state"] == "delivered")
    assert mesh(b.data, "chat", "read", ka).returncode == 0
    _until("read at A", lambda: history(a.data, kb)[-1]["state"] == "read")


def test_send_wait_times_out_with_exit_1_and_the_reason(tmp_path: Path) -> None:
    a = ChatProcess(tmp_path / "a")
    try:
        nobody = node_key(tmp_path / "nobody")
        done = mesh(a.data, "chat", "send", nobody, "anyone?", "--wait", "--timeout", "2")
        assert done.returncode == 1
        assert "not delivered after 2 s" in done.stderr and "pending" in done.stderr
        bad = mesh(a.data, "chat", "send", "not-a-key", "x")
        assert bad.returncode == 2 and "no contact is called" in bad.stderr
        usage = mesh(a.data, "chat", "history")
        assert usage.returncode == 2 and "usage: mesh chat history" in usage.stderr
    finally:
        a.stop()


async def _accepted(data: Path, key: str) -> None:
    (data / "chat").mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await ChatStore.open(data / "chat" / DB_FILE)
    try:
        await store.set_flag(bytes.fromhex(key), "accepted", True)
    finally:
        await store.close()


def test_twenty_queued_messages_survive_kill_9_and_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    b_data = tmp_path / "b"
    kb = node_key(b_data)  # B exists, but is down
    # ... and has accepted A (more than a stranger's few-message request)
    asyncio.run(_accepted(b_data, node_key(tmp_path / "a")))
    a = ChatProcess(tmp_path / "a", "--listen", "tcp://127.0.0.1:0")
    ids = []
    try:
        for i in range(20):
            done = mesh(a.data, "chat", "send", kb, f"queued {i}")
            assert done.returncode == 0, done.stderr
            ids.append(done.stdout.strip())
        assert {m["state"] for m in history(a.data, kb)} == {"pending"}
        a.kill()
        a = ChatProcess(tmp_path / "a", "--listen", "tcp://127.0.0.1:0")
        ka = node_key(a.data)
        b = ChatProcess(b_data, "--peer", a.listen_uri)
        try:
            _until("20 at B", lambda: len(history(b_data, ka)) >= 20, timeout=120)
            got = history(b_data, ka)
            assert [m["id"] for m in got] == ids
            assert [m["body"] for m in got] == [f"queued {i}" for i in range(20)]

            def all_delivered() -> bool:  # B accepted A: receipts come back
                return all(m["state"] == "delivered" for m in history(a.data, kb))

            _until("all delivered at A", all_delivered, timeout=120)
        finally:
            b.stop()
    finally:
        a.stop()


def test_usage_errors_exit_2_without_a_node(tmp_path: Path) -> None:
    for argv, said in (
        (("history",), "usage: mesh chat history CONTACT"),
        (("send", "k"), "usage: mesh chat send CONTACT TEXT|-"),
        (("send", "k", "t", "--wait", "--timeout", "0"), "--timeout must be > 0"),
        (("history", "k", "--limit", "0"), "--limit must be from 1 to 100000"),
        (("frob", "x"), "unknown chat command 'frob'"),
    ):
        done = mesh(tmp_path, "chat", *argv, timeout=20)
        assert done.returncode == 2 and said in done.stderr, (argv, done.stderr)
    gone = mesh(tmp_path, "chat", "requests", timeout=20)
    assert gone.returncode == 1 and "no node is running" in gone.stderr
