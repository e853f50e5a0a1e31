"""The kernel side of the TUN interop tests: plain socket code run inside the
namespace with ``ip netns exec``.  Prints one JSON line with what it saw; servers
print ``ready`` first, once they listen.

    kernel_peer.py echo-client HOST PORT NBYTES
    kernel_peer.py reset-client HOST PORT
    kernel_peer.py serve-echo HOST PORT
    kernel_peer.py serve-send HOST PORT NBYTES
    kernel_peer.py serve-recv HOST PORT
    kernel_peer.py udp-echo HOST PORT COUNT
    kernel_peer.py udp-send HOST PORT DEST DPORT COUNT
    kernel_peer.py udp-closed DEST DPORT
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import sys
import time


def pattern(n: int) -> bytes:
    block = hashlib.sha256(b"netstack").digest() * 2048  # 64 KiB
    reps = n // len(block) + 1
    return (block * reps)[:n]


def out(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def recv_all(s: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        d = s.recv(1 << 20)
        if not d:
            return bytes(buf)
        buf += d


def listen(host: str, port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    print("ready", flush=True)
    return srv


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "echo-client":
        host, port, n = argv[1], int(argv[2]), int(argv[3])
        data = pattern(n)
        s = socket.create_connection((host, port), timeout=60)
        t0 = time.monotonic()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        back = recv_all(s)
        out(sent=n, received=len(back), match=back == data, seconds=time.monotonic() - t0)
    elif mode == "reset-client":
        s = socket.create_connection((argv[1], int(argv[2])), timeout=30)
        s.sendall(b"about to reset")
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        out(reset=True)
    elif mode in ("serve-echo", "serve-send", "serve-recv"):
        srv = listen(argv[1], int(argv[2]))
        srv.settimeout(60)
        conn, peer = srv.accept()
        conn.settimeout(60)
        if mode == "serve-echo":
            data = recv_all(conn)
            conn.sendall(data)
            conn.close()
            out(peer=peer[0], echoed=len(data))
        elif mode == "serve-send":
            n = int(argv[3])
            conn.sendall(pattern(n))
            conn.close()
            out(peer=peer[0], sent=n)
        else:
            data = recv_all(conn)
            conn.sendall(b"got %d" % len(data))
            conn.close()
            out(peer=peer[0], received=len(data), match=data == pattern(len(data)))
    elif mode == "udp-echo":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((argv[1], int(argv[2])))
        s.settimeout(30)
        print("ready", flush=True)
        for _ in range(int(argv[3])):
            data, addr = s.recvfrom(65535)
            s.sendto(data[::-1], addr)
        out(echoed=int(argv[3]))
    elif mode == "udp-send":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((argv[1], int(argv[2])))
        s.settimeout(10)
        replies = []
        for i in range(int(argv[5])):
            s.sendto(b"kernel datagram %d" % i, (argv[3], int(argv[4])))
            replies.append(s.recvfrom(65535)[0].decode())
        out(replies=replies)
    elif mode == "udp-closed":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((argv[1], int(argv[2])))
        s.send(b"anyone?")
        try:
            s.recv(100)
            out(error=None)
        except ConnectionRefusedError:
            out(error="ECONNREFUSED")
        except TimeoutError:
            out(error="timeout")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
