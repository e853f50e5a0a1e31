"""Two NetStacks in one event loop, wired packet to packet through an impairment hook
(loss, reordering, duplication in both directions), used through the asyncio API."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from typing import Any

import pytest

from core.netstack.aio import TcpTransport
from core.netstack.tcp import TcpConfig
from tests.netstack._link import A_ADDR, B_ADDR, Impairment, stack_pair


def pattern(n: int) -> bytes:
    block = hashlib.sha256(b"bulk").digest() * 4096
    return (block * (n // len(block) + 1))[:n]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 20):
        writer.write(data)
        await writer.drain()
    writer.close()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def test_handshake_echo_and_extra_info() -> None:
    seen: list[ipaddress.IPv6Address] = []

    def hook(peer: ipaddress.IPv6Address) -> dict[str, Any]:
        seen.append(peer)
        return {"peer_key": b"K" + peer.packed}

    a, b = stack_pair(extra_info=hook)
    async with a, b:
        server = await b.create_server(EchoProtocol, 7)
        assert server.port == 7 and server.is_serving()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.put_nowait(data)

        transport, _ = await a.create_connection(Client, B_ADDR, 7)
        transport.write(b"ping")
        assert await asyncio.wait_for(got.get(), 5) == b"ping"
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        assert peer == (B_ADDR, 7, 0, 0)
        assert sock[0] == A_ADDR and sock[1] >= 49152
        assert transport.get_extra_info("peer_key") == b"K" + ipaddress.IPv6Address(B_ADDR).packed
        assert ipaddress.IPv6Address(A_ADDR) in seen  # the server side saw the client too
        transport.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("mtu", [65535, 1500])
async def test_bulk_10mb_with_loss_reorder_duplicates_both_ways(mtu: int) -> None:
    """10 MiB echoed back (so 10 MiB each way), 5 % loss, 5 % reordering, 1 %
    duplication in both directions; with Yggdrasil's MTU and an Ethernet-like one
    (7,000+ segments, so recovery runs hundreds of times)."""
    ab = Impairment(loss=0.05, reorder=0.05, duplicate=0.01, seed=11)
    ba = Impairment(loss=0.05, reorder=0.05, duplicate=0.01, seed=12)
    a, b = stack_pair(ab, ba, mtu=mtu)
    async with a, b:
        server = await b.start_server(echo_handler, 9000)
        reader, writer = await a.open_connection(B_ADDR, 9000)
        data = pattern(10 * 1024 * 1024)

        async def send() -> None:
            writer.write(data)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        back = await asyncio.wait_for(reader.read(-1), 120)
        await sender
        assert len(back) == len(data)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        assert ab.dropped > 3 and ba.dropped > 3 and ab.reordered > 3
        writer.close()
        await writer.wait_closed()
        server.close()


async def test_half_close_each_direction() -> None:
    a, b = stack_pair()
    async with a, b:
        server_saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.read(-1)  # until the client's FIN
            server_saw.set_result(request)
            writer.write(b"answer after your FIN")
            await writer.drain()
            writer.close()

        server = await b.start_server(handler, 80)
        reader, writer = await a.open_connection(B_ADDR, 80)
        writer.write(b"question")
        writer.write_eof()
        assert writer.can_write_eof()
        assert await asyncio.wait_for(server_saw, 5) == b"question"
        assert await asyncio.wait_for(reader.read(-1), 5) == b"answer after your FIN"
        writer.close()
        await writer.wait_closed()

        # and the other way: the server half-closes first, the client keeps sending
        client_sent: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handler2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"banner then FIN")
            writer.write_eof()
            client_sent.set_result(await reader.read(-1))
            writer.close()

        server2 = await b.start_server(handler2, 81)
        reader, writer = await a.open_connection(B_ADDR, 81)
        assert await asyncio.wait_for(reader.read(-1), 5) == b"banner then FIN"
        writer.write(b"still talking after your FIN")
        writer.write_eof()
        assert await asyncio.wait_for(client_sent, 5) == b"still talking after your FIN"
        writer.close()
        server.close()
        server2.close()


async def test_rst_on_closed_port_and_on_abort() -> None:
    a, b = stack_pair()
    async with a, b:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(a.open_connection(B_ADDR, 4444), 5)
        assert b.stats.resets_sent == 1

        lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

        class Watcher(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        server = await b.create_server(Watcher, 4445)
        _, writer = await a.open_connection(B_ADDR, 4445)
        await asyncio.sleep(0.01)
        writer.transport.abort()
        exc = await asyncio.wait_for(lost, 5)
        assert isinstance(exc, ConnectionResetError)
        server.close()


async def test_flow_control_slow_reader_bounded_memory() -> None:
    cfg = TcpConfig(send_buffer=256 * 1024, receive_buffer=256 * 1024)
    a, b = stack_pair(tcp_config=cfg)
    async with a, b:
        conns: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
        received = bytearray()

        class Slow(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()
                conns.put_nowait(transport)

            def data_received(self, data: bytes) -> None:
                received.extend(data)

        pauses = 0

        class Writer(asyncio.Protocol):
            def pause_writing(self) -> None:
                nonlocal pauses
                pauses += 1

        server = await b.create_server(Slow, 5000)
        transport, _ = await a.create_connection(Writer, B_ADDR, 5000)
        server_side = await asyncio.wait_for(conns.get(), 5)
        total = 4 * 1024 * 1024
        transport.write(pattern(total))
        await asyncio.sleep(0.3)
        (conn_b,) = [s.conn for s in b._tcp.values()]
        (conn_a,) = [s.conn for s in a._tcp.values()]
        # the receiver holds at most its buffer; the sender at most its buffer plus
        # what the transport keeps (the application's own write)
        assert conn_b.receive_buffered <= cfg.receive_buffer
        assert conn_a.send_buffered <= cfg.send_buffer
        assert pauses == 1 and not received
        for _ in range(200):  # now read slowly, 64 kB at a time
            server_side.resume_reading()
            await asyncio.sleep(0)
            server_side.pause_reading()
            await asyncio.sleep(0.002)
            assert conn_b.receive_buffered <= cfg.receive_buffer
            if len(received) == total:
                break
        server_side.resume_reading()
        for _ in range(500):
            if len(received) == total:
                break
            await asyncio.sleep(0.01)
        assert bytes(received) == pattern(total)
        transport.close()
        server.close()


async def test_one_thousand_concurrent_connections() -> None:
    a, b = stack_pair(syn_backlog=1024)
    async with a, b:
        server = await b.start_server(echo_handler, 8000)

        async def one(i: int) -> bytes:
            reader, writer = await a.open_connection(B_ADDR, 8000)
            msg = b"conn %d" % i
            writer.write(msg)
            writer.write_eof()
            data = await reader.read(-1)
            writer.close()
            return data

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 60)
        assert results == [b"conn %d" % i for i in range(1000)]
        server.close()


async def test_syn_flood_is_bounded_by_backlog() -> None:
    from core.netstack.ipv6 import PROTO_TCP, build_packet
    from core.netstack.tcp_wire import SYN, TcpSegment

    a, b = stack_pair(syn_backlog=16)
    async with a, b:
        server = await b.create_server(EchoProtocol, 22)
        src = ipaddress.IPv6Address("fd00:1::666").packed
        dst = ipaddress.IPv6Address(B_ADDR).packed
        for port in range(1000, 1500):
            seg = TcpSegment(port, 22, port * 7919, 0, SYN, 65535)
            b.receive_packet(build_packet(src, dst, PROTO_TCP, seg.encode_parts(src, dst)))
        assert b.connection_count == 16
        assert b.stats.syn_dropped == 484
        # legitimate clients still get in once half-open entries time out
        server.close()


async def test_udp_both_ways_and_port_unreachable() -> None:
    a, b = stack_pair()
    async with a, b:
        inbox_a: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        inbox_b: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        class Recv(asyncio.DatagramProtocol):
            def __init__(self, inbox: asyncio.Queue[tuple[bytes, Any]]) -> None:
                self.inbox = inbox

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.inbox.put_nowait((data, addr))

            def error_received(self, exc: Exception) -> None:
                errors.put_nowait(exc)

        tb, _ = await b.create_datagram_endpoint(lambda: Recv(inbox_b), local_addr=(B_ADDR, 5353))
        ta, _ = await a.create_datagram_endpoint(lambda: Recv(inbox_a), local_addr=(None, 0))
        port_a = ta.get_extra_info("sockname")[1]
        ta.sendto(b"to b", (B_ADDR, 5353))
        data, addr = await asyncio.wait_for(inbox_b.get(), 5)
        assert data == b"to b" and addr == (A_ADDR, port_a, 0, 0)
        tb.sendto(b"to a", addr)
        assert await asyncio.wait_for(inbox_a.get(), 5) == (b"to a", (B_ADDR, 5353, 0, 0))
        big = bytes(60_000)
        ta.sendto(big, (B_ADDR, 5353))
        assert (await asyncio.wait_for(inbox_b.get(), 5))[0] == big
        ta.sendto(bytes(70_000), (B_ADDR, 5353))
        assert isinstance(await asyncio.wait_for(errors.get(), 5), OSError)

        tc, _ = await a.create_datagram_endpoint(lambda: Recv(inbox_a), remote_addr=(B_ADDR, 6000))
        tc.sendto(b"nobody home")
        exc = await asyncio.wait_for(errors.get(), 5)
        assert isinstance(exc, ConnectionRefusedError)
        for t in (ta, tb, tc):
            t.close()


async def test_buffered_data_and_eof_survive_peer_close_while_paused() -> None:
    """The client half-closes and pauses reading; the server answers 1 MB and closes,
    so the client's TCP reaches TIME-WAIT with the answer still buffered.  Resuming
    must deliver all of it, then eof_received, then connection_lost(None)."""
    a, b = stack_pair()
    async with a, b:
        answer = pattern(1_000_000)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await b.start_server(handler, 90)
        order: list[str] = []
        got = bytearray()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        class Paused(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()
                transport.write_eof()

            def data_received(self, data: bytes) -> None:
                got.extend(data)

            def eof_received(self) -> bool:
                order.append("eof")
                return False

            def connection_lost(self, exc: Exception | None) -> None:
                order.append(f"lost {exc}")
                done.set_result(None)

        transport, _ = await a.create_connection(Paused, B_ADDR, 90)
        for _ in range(500):
            states = [s.conn.state.value for s in a._tcp.values()]
            if states == ["TIME-WAIT"]:
                break
            await asyncio.sleep(0.01)
        assert states == ["TIME-WAIT"] and not order and not got
        transport.resume_reading()
        await asyncio.wait_for(done, 5)
        assert bytes(got) == answer
        assert order == ["eof", "lost None"]
        server.close()


async def test_packet_too_big_lowers_mss_and_transfer_completes() -> None:
    """A hop with a 9000-byte MTU between the stacks drops bigger packets and answers
    ICMPv6 Packet Too Big (as yggdrasil's ipv6rwc does); the sender shrinks its MSS."""
    from core.netstack.icmpv6 import IcmpMessage
    from core.netstack.ipv6 import PROTO_ICMPV6, build_packet

    loop = asyncio.get_running_loop()
    holder: dict[str, Any] = {}
    router = ipaddress.IPv6Address("fd00:1::1").packed
    a_addr = ipaddress.IPv6Address(A_ADDR).packed
    too_big = 0

    def a_to_b(pkt: bytes) -> None:
        nonlocal too_big
        if len(pkt) > 9000:
            too_big += 1
            msg = IcmpMessage.packet_too_big(9000, pkt).encode(router, a_addr)
            ptb = build_packet(router, a_addr, PROTO_ICMPV6, (msg,))
            loop.call_soon(holder["a"].receive_packet, ptb)
            return
        loop.call_soon(holder["b"].receive_packet, pkt)

    from core.netstack.stack import NetStack

    a = NetStack([A_ADDR], a_to_b)
    b = NetStack([B_ADDR], lambda p: loop.call_soon(holder["a"].receive_packet, p))
    holder.update(a=a, b=b)
    async with a, b:
        server = await b.start_server(echo_handler, 7)
        reader, writer = await a.open_connection(B_ADDR, 7)
        data = pattern(1_000_000)
        writer.write(data)
        writer.write_eof()
        back = await asyncio.wait_for(reader.read(-1), 30)
        assert back == data
        assert too_big >= 1
        (conn,) = [s.conn for s in a._tcp.values()]
        assert conn.mss == 9000 - 60
        writer.close()
        server.close()


async def test_connections_to_our_own_address_loop_back() -> None:
    sent: list[bytes] = []
    from core.netstack.stack import NetStack

    async with NetStack([A_ADDR], sent.append) as stack:
        server = await stack.start_server(echo_handler, 25)
        reader, writer = await stack.open_connection(A_ADDR, 25)
        writer.write(b"to myself")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(-1), 5) == b"to myself"
        assert writer.get_extra_info("peername") == (A_ADDR, 25, 0, 0)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Inbox(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.put_nowait(data)

        t, _ = await stack.create_datagram_endpoint(Inbox, local_addr=(A_ADDR, 53))
        t.sendto(b"dgram to myself", (A_ADDR, 53))
        assert await asyncio.wait_for(got.get(), 5) == b"dgram to myself"
        assert sent == []  # nothing left through the link
        t.close()
        writer.close()
        server.close()


async def test_full_table_recycles_time_wait_then_refuses() -> None:
    a, b = stack_pair(max_connections=3)
    async with a, b:
        server = await b.start_server(echo_handler, 7)
        for _ in range(5):  # each leaves a TIME-WAIT entry on the client side
            reader, writer = await a.open_connection(B_ADDR, 7)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(-1), 5) == b""
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if all(s.conn.state.value == "TIME-WAIT" for s in a._tcp.values()):
                    break
                await asyncio.sleep(0.01)
        assert a.connection_count == 3  # recycled, never more than the bound
        held = [await a.open_connection(B_ADDR, 7) for _ in range(3)]  # all live now
        with pytest.raises(OSError, match="connection table full"):
            await a.open_connection(B_ADDR, 7)
        for _, w in held:
            w.close()
        server.close()


async def test_keepalive_per_connection_detects_a_vanished_peer() -> None:
    """The peer's stack disappears silently (no RST): keepalive notices."""
    ab, ba = Impairment(), Impairment()
    a, b = stack_pair(ab, ba)
    async with a, b:
        server = await b.start_server(echo_handler, 7)
        lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

        class Watch(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        transport, _ = await a.create_connection(Watch, B_ADDR, 7)
        assert isinstance(transport, TcpTransport)
        transport.set_keepalive(0.05, interval=0.02, count=3)
        await asyncio.sleep(0.2)
        assert not lost.done()  # the peer answers the probes
        server.close()
        ab.loss = ba.loss = 1.0  # the path dies: no RST, no answers
        exc = await asyncio.wait_for(lost, 5)
        assert isinstance(exc, TimeoutError) and "keepalive" in str(exc)
