"""One control connection carries calls and a filtered event stream (what a live UI needs)."""

from __future__ import annotations

import asyncio
import random
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.backend import NodeEvent
from core.control.client import ControlClient, EventStream
from core.control.server import ControlServer
from core.errors import MeshError, UsageError
from core.events import EventBus


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[ControlServer, EventBus, Path]]:
    bus = EventBus()
    srv = ControlServer(tmp_path / "control.sock", bus)

    async def echo(params: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(params.get("delay", 0)))
        return params

    srv.register("echo", echo)
    await srv.start()
    try:
        yield srv, bus, tmp_path / "control.sock"
    finally:
        await srv.close()


async def _first(stream: EventStream) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), 5)


@pytest.mark.timeout(60)
async def test_a_subscriber_gets_10000_events_in_order_while_making_100_calls(
    live: tuple[ControlServer, EventBus, Path],
) -> None:
    _, bus, path = live
    async with await ControlClient.connect(path) as client:
        stream = client.subscribe(["chat."])
        await stream.start()
        bus.publish(NodeEvent("chat.ready"))
        first = await _first(stream)
        assert first["event"] == "chat.ready"

        async def publisher() -> None:
            for i in range(10_000):
                bus.publish(NodeEvent("chat.message", {"n": i}))
                bus.publish(NodeEvent("peer.up", {"n": i}))  # filtered out
                if i % 100 == 0:
                    await asyncio.sleep(0)

        async def caller() -> list[Any]:
            return [await client.call("echo", n=i) for i in range(100)]

        async def reader() -> list[int]:
            seen: list[int] = []
            while len(seen) < 10_000:
                event = await _first(stream)
                assert event["event"] == "chat.message", event
                seen.append(event["data"]["n"])
            return seen

        read_task = asyncio.create_task(reader())
        replies, _ = await asyncio.gather(caller(), publisher())
        seen = await read_task
    assert replies == [{"n": i} for i in range(100)]
    assert seen == list(range(10_000))


@pytest.mark.timeout(60)
async def test_concurrent_calls_on_one_client_each_get_their_own_reply(
    live: tuple[ControlServer, EventBus, Path],
) -> None:
    _, _, path = live
    rng = random.Random(7)
    async with await ControlClient.connect(path) as client:
        results = await asyncio.gather(
            *(client.call("echo", n=i, delay=rng.random() / 50) for i in range(200))
        )
        assert results == [{"n": i, "delay": r["delay"]} for i, r in enumerate(results)]
        with pytest.raises(MeshError, match="no method"):
            await client.call("nope")
        assert await client.call("echo", after="error") == {"after": "error"}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
async def test_a_subscriber_that_never_reads_gets_lagged_and_memory_stays_bounded(
    live: tuple[ControlServer, EventBus, Path],
) -> None:
    _, bus, path = live
    # A raw socket that subscribes and then does not read at all.
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b'{"id":1,"method":"subscribe","params":{"prefixes":["chat."]}}\n')
    await writer.drain()
    assert b'"subscribed":true' in await asyncio.wait_for(reader.readline(), 5)
    payload = "x" * 1000
    before = _rss_mb()
    for i in range(200_000):  # ~200 MB of events if anything kept them all
        bus.publish(NodeEvent("chat.message", {"n": i, "body": payload}))
        if i % 500 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0.2)
    grown = _rss_mb() - before
    assert grown < 40, f"RSS grew {grown:.1f} MB for a subscriber that never reads"
    # Reading again: a lagged notice says how many were dropped, then newer events follow.
    lagged = None
    for _ in range(5000):
        line = await asyncio.wait_for(reader.readline(), 5)
        if b'"events.lagged"' in line:
            lagged = line
            break
    assert lagged is not None and b'"dropped":' in lagged
    writer.write(b'{"id":2,"method":"echo","params":{"still":"here"}}\n')
    await writer.drain()
    for _ in range(5000):
        line = await asyncio.wait_for(reader.readline(), 5)
        if line.startswith(b'{"id":2'):
            assert b'"still":"here"' in line
            break
    else:
        raise AssertionError("the call on a lagging connection was never answered")
    writer.close()
    await writer.wait_closed()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


@pytest.mark.timeout(30)
async def test_subscribe_refuses_bad_prefixes_and_keeps_the_connection(
    live: tuple[ControlServer, EventBus, Path],
) -> None:
    _, _, path = live
    async with await ControlClient.connect(path) as client:
        with pytest.raises(UsageError, match="prefixes"):
            await client.call("subscribe", prefixes="chat.")
        assert await client.call("echo", ok=1) == {"ok": 1}


@pytest.mark.timeout(30)
async def test_callers_and_subscribers_are_told_when_the_node_goes_away(
    live: tuple[ControlServer, EventBus, Path],
) -> None:
    srv, bus, path = live
    client = await ControlClient.connect(path)
    stream = client.subscribe()
    await stream.start()
    bus.publish(NodeEvent("x.first"))
    assert (await _first(stream))["event"] == "x.first"
    slow = asyncio.create_task(client.call("echo", delay=30))
    await asyncio.sleep(0.1)
    await srv.close()
    with pytest.raises(MeshError):
        await asyncio.wait_for(slow, 5)
    with pytest.raises(StopAsyncIteration):
        await _first(stream)
    await client.close()


@pytest.mark.timeout(30)
async def test_deeply_nested_json_is_a_bad_request_not_a_traceback(
    live: tuple[ControlServer, EventBus, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, path = live
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"[" * 100_000 + b"\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 5)
    assert b'"bad_request"' in reply and b"nested too deeply" in reply
    writer.close()
    await writer.wait_closed()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    async with await ControlClient.connect(path) as client:
        assert await client.call("echo", alive=True) == {"alive": True}
