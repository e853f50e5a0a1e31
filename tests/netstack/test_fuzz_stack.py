"""Hypothesis throws garbage at NetStack.receive_packet: raw bytes, and well-framed
IPv6/TCP/UDP/ICMPv6 packets with valid checksums but random fields aimed at a
listening port and at an established connection.  Nothing may raise, and the
connection table and buffers stay within their bounds."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.netstack.icmpv6 import IcmpMessage
from core.netstack.ipv6 import PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, build_packet
from core.netstack.stack import NetStack
from core.netstack.tcp import TcpConfig
from core.netstack.tcp_wire import TcpOptions, TcpSegment
from core.netstack.udp import UdpDatagram
from tests.netstack._link import A_ADDR, B_ADDR, stack_pair

A = ipaddress.IPv6Address(A_ADDR).packed
B = ipaddress.IPv6Address(B_ADDR).packed
CFG = TcpConfig(send_buffer=64 * 1024, receive_buffer=64 * 1024)
BACKLOG = 8

u32 = st.integers(0, 0xFFFFFFFF)
options = st.builds(
    TcpOptions,
    mss=st.none() | st.integers(0, 0xFFFF),
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=3).map(tuple),
)


class Env:
    """Stack B listening on port 80 with one connection established from stack A."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._setup())

    async def _setup(self) -> None:
        self.a, self.b = stack_pair(tcp_config=CFG, syn_backlog=BACKLOG)
        self.server = await self.b.create_server(asyncio.Protocol, 80)
        self.transport, _ = await self.a.create_connection(asyncio.Protocol, B_ADDR, 80)
        (sock,) = self.b._tcp.values()
        self.conn = sock.conn
        self.client_port = sock.conn.remote_port

    def feed(self, packets: list[bytes]) -> None:
        async def run() -> None:
            for pkt in packets:
                self.b.receive_packet(pkt)
            for _ in range(5):
                await asyncio.sleep(0)

        self.loop.run_until_complete(run())
        assert self.b.connection_count <= BACKLOG + 1
        assert self.conn.receive_buffered <= CFG.receive_buffer
        assert self.conn.send_buffered <= CFG.send_buffer

    def close(self) -> None:
        self.a.close()
        self.b.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz_settings(150)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_raw_garbage(packets: list[bytes]) -> None:
    env = Env()
    try:
        env.feed(packets)
        env.feed([b"\x60" + p for p in packets])
    finally:
        env.close()


segment = st.builds(
    TcpSegment,
    src_port=st.sampled_from([0, 1, 40000]) | st.integers(0, 0xFFFF),
    dst_port=st.sampled_from([80, 81, 0]),
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=2000),
    options=options,
    urgent=st.integers(0, 0xFFFF),
)


@fuzz_settings(150)
@given(st.lists(segment, max_size=30), st.booleans())
def test_valid_checksum_random_tcp(segments: list[TcpSegment], to_connection: bool) -> None:
    env = Env()
    try:
        pkts = []
        for seg in segments:
            if to_connection:  # aim at the live connection's 4-tuple, seq near its own
                base = env.conn._wire_ack()
                seg = TcpSegment(
                    env.client_port, 80, (base + seg.seq % 200_000 - 100_000) & 0xFFFFFFFF,
                    seg.ack, seg.flags, seg.window, seg.payload, seg.options,
                )  # fmt: skip
            try:
                parts = seg.encode_parts(A, B)
            except ValueError:
                continue  # more options than a header holds: not a packet
            pkts.append(build_packet(A, B, PROTO_TCP, parts))
        env.feed(pkts)
    finally:
        env.close()


@fuzz_settings(100)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([PROTO_UDP, PROTO_ICMPV6]),
            st.integers(0, 0xFFFF),
            st.integers(0, 255),
            st.binary(max_size=1400),
        ),
        max_size=20,
    )
)
def test_valid_checksum_random_udp_and_icmp(items: list[tuple[int, int, int, bytes]]) -> None:
    env = Env()
    try:
        pkts = []
        for proto, port, kind, body in items:
            if proto == PROTO_UDP:
                payload = UdpDatagram(port, port ^ 0x5555, body).encode(A, B)
            else:
                payload = IcmpMessage(kind, port & 0xFF, body).encode(A, B)
            pkts.append(build_packet(A, B, proto, (payload,)))
        env.feed(pkts)
    finally:
        env.close()


def test_stack_rejects_non_ipv6_and_foreign_destinations() -> None:
    async def run() -> NetStack:
        sent: list[bytes] = []
        stack = NetStack([B_ADDR], sent.append)
        seg = TcpSegment(1, 80, 0, 0, 0x02, 100)
        stack.receive_packet(build_packet(B, A, PROTO_TCP, seg.encode_parts(B, A)))  # not ours
        stack.receive_packet(b"\x45" + bytes(60))
        assert not sent
        return stack

    stack = asyncio.run(run())
    assert stack.stats.not_for_us == 1 and stack.stats.malformed == 1
