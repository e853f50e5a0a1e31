"""The control API: framing, a real Unix-socket server at 0600, errors, event stream."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.backend import NodeEvent
from core.control.client import ControlClient, NodeNotRunning
from core.control.protocol import LineDecoder, ProtocolError, parse_request
from core.control.server import ControlServer
from core.errors import MeshError, UsageError
from core.events import EventBus


def test_decoder_splits_lines_across_chunks() -> None:
    dec = LineDecoder()
    assert dec.feed(b'{"id":1,"meth') == []
    assert dec.feed(b'od":"status"}\n{"id":2,"method":"x"}\n') == [
        {"id": 1, "method": "status"},
        {"id": 2, "method": "x"},
    ]


def test_decoder_refuses_endless_line() -> None:
    dec = LineDecoder(max_line=100)
    with pytest.raises(ProtocolError, match="longer than 100"):
        dec.feed(b"x" * 101)


def test_request_needs_method_and_object_params() -> None:
    with pytest.raises(ProtocolError, match="method"):
        parse_request({"id": 1})
    with pytest.raises(ProtocolError, match="params"):
        parse_request({"id": 1, "method": "a", "params": [1]})


@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    dec = LineDecoder(max_line=200)
    try:
        for msg in dec.feed(data + b"\n"):
            assert isinstance(msg, dict)
    except ProtocolError:
        pass


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    bus = EventBus()
    srv = ControlServer(tmp_path / "control.sock", bus)

    async def echo(params: dict[str, Any]) -> dict[str, Any]:
        return params

    async def usage(params: dict[str, Any]) -> None:
        raise UsageError("you asked wrong")

    async def fails(params: dict[str, Any]) -> None:
        raise MeshError("it broke, do X")

    async def crashes(params: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    for name, fn in {"echo": echo, "usage": usage, "fails": fails, "crashes": crashes}.items():
        srv.register(name, fn)
    await srv.start()
    yield srv, bus
    await srv.close()


async def test_socket_is_owner_only(server: Any) -> None:
    srv, _ = server
    assert stat.S_IMODE(srv.path.stat().st_mode) == 0o600


async def test_call_round_trips_params(server: Any) -> None:
    srv, _ = server
    async with await ControlClient.connect(srv.path) as client:
        assert await client.call("echo", a=1, b="x") == {"a": 1, "b": "x"}


async def test_errors_map_to_usage_and_runtime_failures(server: Any) -> None:
    srv, _ = server
    async with await ControlClient.connect(srv.path) as client:
        with pytest.raises(UsageError, match="you asked wrong"):
            await client.call("usage")
        with pytest.raises(MeshError, match="it broke"):
            await client.call("fails")
        with pytest.raises(MeshError, match="see the node's log"):
            await client.call("crashes")
        with pytest.raises(MeshError, match="no method"):
            await client.call("nope")
        assert await client.call("echo", still="alive") == {"still": "alive"}


async def test_malformed_line_gets_error_and_server_lives(server: Any) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_unix_connection(str(srv.path))
    writer.write(b"this is not json\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    assert b"bad_request" in line
    writer.close()
    async with await ControlClient.connect(srv.path) as client:
        assert await client.call("echo") == {}


async def test_subscribers_receive_published_events(server: Any) -> None:
    srv, bus = server
    async with await ControlClient.connect(srv.path) as client:
        events = client.events()
        first = asyncio.ensure_future(events.__anext__())
        for _ in range(100):  # wait until the server-side subscription exists
            if bus._subs:
                break
            await asyncio.sleep(0.01)
        bus.publish(NodeEvent("peer.up", {"uri": "tls://x"}))
        event = await asyncio.wait_for(first, 5)
        assert event == {"event": "peer.up", "data": {"uri": "tls://x"}}
        await events.aclose()


async def test_second_server_on_same_data_dir_is_refused(server: Any) -> None:
    srv, bus = server
    with pytest.raises(MeshError, match="another node already runs"):
        await ControlServer(srv.path, bus).start()


async def test_client_says_node_not_running(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning, match="mesh up"):
        await ControlClient.connect(tmp_path / "control.sock")


async def test_slow_subscriber_loses_oldest_events_not_memory() -> None:
    bus = EventBus(queue_size=3)
    async with bus.subscribe() as sub:
        for i in range(10):
            bus.publish(NodeEvent("tick", {"i": i}))
        lagged = await sub.get()
        assert lagged is not None and lagged.kind == "events.lagged"
        assert lagged.data["dropped"] == 7
        rest = [await sub.get() for _ in range(3)]
        assert [e.data["i"] for e in rest if e] == [7, 8, 9]
