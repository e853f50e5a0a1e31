"""Kernel-side peer for bench_netstack.py, run inside a namespace.

    bench_peer.py sink HOST PORT            accept forever: read to EOF, reply b"ok"
    bench_peer.py source HOST PORT NBYTES   accept forever: send NBYTES, close
    bench_peer.py echo HOST PORT            accept forever: echo until EOF
    bench_peer.py send HOST PORT NBYTES     client: send NBYTES, half-close, await b"ok"
    bench_peer.py recv HOST PORT            client: read to EOF
    bench_peer.py rtt HOST PORT COUNT SIZE  client: COUNT ping-pongs of SIZE bytes

Clients print one JSON line (seconds, or the RTT samples). Servers print "ready".
"""

from __future__ import annotations

import json
import socket
import sys
import time

CHUNK = bytes(1 << 20)


def serve(host: str, port: int, handle) -> None:  # type: ignore[no-untyped-def]
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            handle(conn)


def drain(conn: socket.socket) -> int:
    n = 0
    while d := conn.recv(1 << 20):
        n += len(d)
    return n


def send_n(conn: socket.socket, n: int) -> None:
    view = memoryview(CHUNK)
    while n > 0:
        k = min(n, len(CHUNK))
        conn.sendall(view[:k])
        n -= k


def main(argv: list[str]) -> None:
    mode, host, port = argv[0], argv[1], int(argv[2])
    if mode == "sink":
        serve(host, port, lambda c: (drain(c), c.sendall(b"ok")))
    elif mode == "source":
        serve(host, port, lambda c: send_n(c, int(argv[3])))
    elif mode == "echo":

        def echo(c: socket.socket) -> None:
            while d := c.recv(65536):
                c.sendall(d)

        serve(host, port, echo)
    else:
        s = socket.create_connection((host, port), timeout=60)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        if mode == "send":
            send_n(s, int(argv[3]))
            s.shutdown(socket.SHUT_WR)
            assert s.recv(2) == b"ok"
            print(json.dumps({"seconds": time.perf_counter() - t0}))
        elif mode == "recv":
            n = drain(s)
            print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": n}))
        elif mode == "rtt":
            count, size = int(argv[3]), int(argv[4])
            msg = b"x" * size
            samples = []
            for _ in range(count):
                t = time.perf_counter()
                s.sendall(msg)
                got = 0
                while got < size:
                    got += len(s.recv(size - got))
                samples.append(time.perf_counter() - t)
            print(json.dumps({"samples": samples}))
        s.close()


if __name__ == "__main__":
    main(sys.argv[1:])
