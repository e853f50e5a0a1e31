"""Interop with the real Linux kernel TCP/UDP/ICMPv6 through a TUN device.

The kernel owns fd00:ab::1 inside a namespace we create; our NetStack owns fd00:ab::2
by reading and writing raw IPv6 packets on the TUN file descriptor.  The kernel side
runs plain socket code (tests/netstack/kernel_peer.py), ``python3 -m http.server``,
``curl`` and ``ping``.  Loss and reordering are injected in our stack's hook, both
directions.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.netstack.stack import NetStack
from tests.conftest import require
from tests.netstack._link import Impairment
from tests.netstack._tunlab import KERNEL_ADDR, STACK_ADDR, TunLab, tun_lab
from tests.netstack.kernel_peer import pattern

PEER = str(Path(__file__).with_name("kernel_peer.py"))


@pytest.fixture
async def lab() -> AsyncIterator[TunLab]:
    with tun_lab("k") as lab:
        yield lab


@pytest.fixture(params=[65535, 1500], ids=["mtu65535", "mtu1500"])
async def mtu_lab(request: pytest.FixtureRequest) -> AsyncIterator[TunLab]:
    with tun_lab("m", mtu=request.param) as lab:
        yield lab


def attach(
    lab: TunLab, out: Impairment | None = None, inbound: Impairment | None = None
) -> NetStack:
    """Our stack on the TUN, optionally impaired in each direction."""
    loop = asyncio.get_running_loop()
    holder: list[NetStack] = []
    send = out.wrap(loop, lab.tun.write) if out else lab.tun.write
    stack = NetStack([STACK_ADDR], send, mtu=lab.mtu)
    holder.append(stack)
    receive = inbound.wrap(loop, stack.receive_packet) if inbound else stack.receive_packet
    lab.tun.attach(loop, receive, stack.flush)
    return stack


class Kernel:
    """A kernel_peer.py process inside the namespace."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, lab: TunLab, *args: str, ready: bool = False) -> Kernel:
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd(sys.executable, PEER, *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        peer = cls(proc)
        if ready:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line == b"ready\n", line
        return peer

    async def result(self, timeout: float = 90) -> dict[str, Any]:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode == 0, err.decode()
        parsed: dict[str, Any] = json.loads(out.splitlines()[-1])
        return parsed


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 20):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_kernel_client_echo_through_our_server(lab: TunLab) -> None:
    """Kernel connects to us, sends 2 MB, half-closes; we echo and close (FIN both ways)."""
    async with attach(lab) as stack:
        server = await stack.start_server(echo_handler, 7)
        res = await (await Kernel.start(lab, "echo-client", STACK_ADDR, "7", "2000000")).result()
        assert res["received"] == 2_000_000 and res["match"] is True
        server.close()


async def test_our_client_to_kernel_http_server(lab: TunLab, tmp_path: Path) -> None:
    body = b"served by the kernel\n" * 1000
    (tmp_path / "file.txt").write_bytes(body)
    async with attach(lab) as stack:
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd(
                sys.executable, "-m", "http.server", "--bind", KERNEL_ADDR,
                "--directory", str(tmp_path), "8000",
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(100):  # wait until the kernel listens (RST until then)
                try:
                    reader, writer = await stack.open_connection(KERNEL_ADDR, 8000)
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("http.server never listened")
            writer.write(b"GET /file.txt HTTP/1.0\r\nHost: k\r\n\r\n")
            response = await asyncio.wait_for(reader.read(-1), 15)  # server closes: FIN
            head, _, got = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") and got == body
            writer.close()
            await writer.wait_closed()
        finally:
            proc.terminate()
            await proc.wait()


async def test_curl_to_our_server(lab: TunLab) -> None:
    require(shutil.which("curl") is not None, "needs curl")

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"hello from the userspace stack\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        writer.write(body)
        await writer.drain()
        writer.close()

    async with attach(lab) as stack:
        server = await stack.start_server(http, 8080)
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd("curl", "-sS", "-g", "--max-time", "10", f"http://[{STACK_ADDR}]:8080/"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert out == b"hello from the userspace stack\n"
        server.close()


async def test_bulk_both_ways_with_loss_and_reordering(mtu_lab: TunLab) -> None:
    """8 MB kernel->us and 8 MB us->kernel, 5 % loss and 5 % reordering injected in our
    hook in both directions; the kernel recovers our losses, we recover its."""
    lab = mtu_lab
    out = Impairment(loss=0.05, reorder=0.05, seed=3)
    inbound = Impairment(loss=0.05, reorder=0.05, seed=4)
    n = 8 * 1024 * 1024
    async with attach(lab, out, inbound) as stack:
        sender = await Kernel.start(lab, "serve-send", KERNEL_ADDR, "9001", str(n), ready=True)
        reader, writer = await stack.open_connection(KERNEL_ADDR, 9001)
        got = await asyncio.wait_for(reader.read(-1), 90)
        assert len(got) == n and got == pattern(n)
        writer.close()
        assert (await sender.result())["sent"] == n

        receiver = await Kernel.start(lab, "serve-recv", KERNEL_ADDR, "9002", ready=True)
        reader, writer = await stack.open_connection(KERNEL_ADDR, 9002)
        writer.write(pattern(n))
        writer.write_eof()  # our FIN; the kernel reads to EOF, answers, closes
        reply = await asyncio.wait_for(reader.read(-1), 90)
        assert reply == b"got %d" % n
        res = await receiver.result()
        assert res["received"] == n and res["match"] is True
        writer.close()
        assert out.dropped > 5 and inbound.dropped > 5
        assert out.reordered > 5 and inbound.reordered > 5


async def test_kernel_resets_closed_port(lab: TunLab) -> None:
    async with attach(lab) as stack:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(stack.open_connection(KERNEL_ADDR, 9), 10)


async def test_kernel_abortive_close_resets_our_connection(lab: TunLab) -> None:
    lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    received = bytearray()

    class Watch(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set_result(exc)

    async with attach(lab) as stack:
        server = await stack.create_server(Watch, 7070)
        res = await (await Kernel.start(lab, "reset-client", STACK_ADDR, "7070")).result()
        assert res == {"reset": True}
        exc = await asyncio.wait_for(lost, 10)
        assert isinstance(exc, ConnectionResetError)
        assert bytes(received) == b"about to reset"
        server.close()


async def test_our_stack_resets_kernel_on_closed_port(lab: TunLab) -> None:
    async with attach(lab) as stack:
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd(
                sys.executable, "-c",
                "import socket\n"
                "try:\n"
                f"    socket.create_connection(('{STACK_ADDR}', 4321), timeout=5)\n"
                "except ConnectionRefusedError:\n"
                "    print('refused')",
            ),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert out == b"refused\n"
        assert stack.stats.resets_sent == 1


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.echo = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait((data, addr))
        if self.echo and self.transport is not None:
            self.transport.sendto(data.upper(), addr)

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)


async def test_udp_both_ways_and_port_unreachable(lab: TunLab) -> None:
    async with attach(lab) as stack:
        # us -> kernel echo
        kernel = await Kernel.start(lab, "udp-echo", KERNEL_ADDR, "5300", "3", ready=True)
        t, proto = await stack.create_datagram_endpoint(Datagrams, local_addr=(None, 0))
        big = bytes(range(256)) * 200
        for msg in (b"one", b"two", big):
            t.sendto(msg, (KERNEL_ADDR, 5300))
            data, addr = await asyncio.wait_for(proto.inbox.get(), 10)
            assert data == msg[::-1] and addr == (KERNEL_ADDR, 5300, 0, 0)
        assert (await kernel.result())["echoed"] == 3
        # kernel -> our echo endpoint
        t2, echo = await stack.create_datagram_endpoint(Datagrams, local_addr=(STACK_ADDR, 5301))
        echo.echo = True
        res = await (
            await Kernel.start(lab, "udp-send", KERNEL_ADDR, "5302", STACK_ADDR, "5301", "3")
        ).result()
        assert res["replies"] == [f"KERNEL DATAGRAM {i}" for i in range(3)]
        # kernel -> our closed port: our ICMPv6 port unreachable reaches its socket
        res = await (await Kernel.start(lab, "udp-closed", STACK_ADDR, "5999")).result()
        assert res == {"error": "ECONNREFUSED"}
        # us -> kernel closed port: the kernel's ICMPv6 reaches our connected endpoint
        t3, refused = await stack.create_datagram_endpoint(
            Datagrams, remote_addr=(KERNEL_ADDR, 5998)
        )
        t3.sendto(b"anyone?")
        assert isinstance(await asyncio.wait_for(refused.errors.get(), 10), ConnectionRefusedError)
        for tr in (t, t2, t3):
            tr.close()


async def test_kernel_pings_us(lab: TunLab) -> None:
    require(shutil.which("ping") is not None, "needs ping (iputils-ping)")
    async with attach(lab):
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd("ping", "-6", "-c", "2", "-i", "0.2", "-W", "3", STACK_ADDR),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"2 received" in out


async def test_aiosmtpd_on_our_stack_receives_mail_from_kernel_smtplib(lab: TunLab) -> None:
    """An asyncio protocol nobody here wrote (aiosmtpd's SMTP) served by our stack,
    unchanged, to Python's smtplib on the kernel side."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    received: list[tuple[str, list[str], bytes, object]] = []

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            assert isinstance(envelope.content, bytes)
            received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content, session.peer))
            return "250 OK"

    async with attach(lab) as stack:
        server = await stack.create_server(lambda: SMTP(Handler()), 2525)
        script = (
            "import smtplib\n"
            f"with smtplib.SMTP('{STACK_ADDR}', 2525, timeout=10) as s:\n"
            "    body = 'Subject: hi\\r\\n\\r\\n' + ('x' * 70 + '\\r\\n') * 1500\n"
            "    s.sendmail('a@mesh', ['b@mesh'], body)\n"
            "print('sent')\n"
        )
        proc = await asyncio.create_subprocess_exec(
            *lab.netns_cmd(sys.executable, "-c", script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert out == b"sent\n", err.decode()
        ((mail_from, rcpts, content, peer),) = received
        assert (mail_from, rcpts) == ("a@mesh", ["b@mesh"])
        assert content.count(b"x" * 70 + b"\r\n") == 1500
        assert isinstance(peer, tuple) and peer[0] == KERNEL_ADDR
        server.close()


async def test_kernel_sender_stalls_on_our_closed_window_and_resumes(lab: TunLab) -> None:
    """Our reader pauses: the window we advertise closes, the kernel stops and probes
    (we answer its zero-window probes), and everything arrives after resume."""
    n = 16 * 1024 * 1024
    got = bytearray()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    transports: list[asyncio.Transport] = []

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            transports.append(transport)

        def data_received(self, data: bytes) -> None:
            got.extend(data)

        def eof_received(self) -> bool:
            done.set_result(None)
            return False

    async with attach(lab) as stack:
        sender = await Kernel.start(lab, "serve-send", KERNEL_ADDR, "9003", str(n), ready=True)
        await stack.create_connection(Slow, KERNEL_ADDR, 9003)
        (conn,) = [s.conn for s in stack._tcp.values()]
        limit = stack.tcp_config.receive_buffer
        for _ in range(500):  # the kernel fills our 4 MiB window...
            if conn.receive_buffered > limit - 128:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.6)  # ...then probes it (its persist timer starts at 200 ms)
        # full up to the window-scale granularity (2**7 bytes for 4 MiB)
        assert stack.tcp_config.receive_buffer - 128 < conn.receive_buffered
        assert conn.receive_buffered <= stack.tcp_config.receive_buffer
        assert not got
        transports[0].resume_reading()
        await asyncio.wait_for(done, 30)
        assert len(got) == n and bytes(got) == pattern(n)
        assert (await sender.result())["sent"] == n
