"""IMAP header-listing benchmark: ``FETCH 1:* (UID FLAGS ENVELOPE)`` over a large mailbox.

Run: ``.venv/bin/python tests/bench/bench_imap.py [--messages 10000] [--runs 7]``

Fills a fresh MailStore in a temporary directory, serves it on 127.0.0.1 and times, from
a raw-socket client (so client parsing is not measured) and from imaplib, the full header
listing a mail client does when it opens a mailbox. Prints the median and spread of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.mail.imap import ImapServer
from apps.mail.store import MailStore

USER = "cd" * 32 + "@mesh"
PASSWORD = "bench"


def message(i: int) -> bytes:
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return (
        f"From: Sender {i % 97} <sender{i % 97}@{'ab' * 32}.mesh>\r\n"
        f"To: {USER}\r\nSubject: benchmark message number {i}\r\n"
        f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
        f"Message-ID: <{i}@bench.mesh>\r\n\r\n" + "Lorem ipsum dolor sit amet.\r\n" * (i % 20 + 1)
    ).encode()


def raw_fetch(port: int, command: bytes) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.recv(4096)
        sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\n".encode())
        _read_until(sock, b"\r\nb OK")
        start = time.perf_counter()
        sock.sendall(b"c " + command + b"\r\n")
        data = _read_until(sock, b"\r\nc OK")
        elapsed = time.perf_counter() - start
        assert data.count(b" FETCH (") >= 1 or b"SEARCH" in data
        sock.sendall(b"d LOGOUT\r\n")
        return elapsed
    finally:
        sock.close()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    chunks = bytearray()
    while marker not in chunks[-65536 - len(marker) :]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        chunks += chunk
    return bytes(chunks)


def imaplib_fetch(port: int) -> tuple[float, int]:
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, PASSWORD)
    m.select("INBOX")
    start = time.perf_counter()
    _, data = m.fetch("1:*", "(UID FLAGS ENVELOPE)")
    elapsed = time.perf_counter() - start
    m.logout()
    return elapsed, len(data)


def report(label: str, samples: list[float]) -> None:
    print(
        f"{label:<52} median {statistics.median(samples) * 1000:8.1f} ms   "
        f"min {min(samples) * 1000:8.1f} ms   max {max(samples) * 1000:8.1f} ms   "
        f"(n={len(samples)})"
    )


async def main(messages: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp:
        store = await MailStore.open(Path(tmp) / "mail.db")
        start = time.perf_counter()
        for i in range(messages):
            await store.deliver("INBOX", message(i), flags=["\\Seen"] if i % 3 else ())
        fill = time.perf_counter() - start
        print(
            f"delivered {messages} messages in {fill:.1f} s ({messages / fill:.0f} msg/s, "
            "each committed with synchronous=FULL)"
        )

        async def authenticator(user: str, password: str) -> bool:
            return password == PASSWORD

        server = ImapServer(store, authenticator, username=USER)
        await server.start("127.0.0.1", 0)
        try:
            port = server.port
            for label, command in (
                ("FETCH 1:* (UID FLAGS ENVELOPE) [raw socket]", b"FETCH 1:* (UID FLAGS ENVELOPE)"),
                (
                    "UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
                    b"UID FETCH 1:* (FLAGS RFC822.SIZE INTERNALDATE)",
                ),
                (
                    "UID FETCH 1:* (... BODY.PEEK[HEADER.FIELDS (...)]) [Thunderbird]",
                    b"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc "
                    b"Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
                    b"In-Reply-To Content-Type Reply-To)])",
                ),
                ("UID SEARCH UNSEEN", b"UID SEARCH UNSEEN"),
                ('SEARCH SUBJECT "number 9999" (headers read)', b'SEARCH SUBJECT "number 9999"'),
                ('SEARCH BODY "needle" (every message read)', b'SEARCH BODY "needle"'),
            ):
                samples = [await asyncio.to_thread(raw_fetch, port, command) for _ in range(runs)]
                report(label, samples)
            results = [await asyncio.to_thread(imaplib_fetch, port) for _ in range(runs)]
            assert all(n == messages for _, n in results)
            report(
                "FETCH 1:* (UID FLAGS ENVELOPE) [imaplib, incl. parsing]", [t for t, _ in results]
            )
        finally:
            await server.close()
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs))
