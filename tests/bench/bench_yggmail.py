"""Mail with the real Yggmail: both directions next to Yggmail talking to Yggmail.

Run (no root; needs the Yggmail binary, see tests/mail/yggmail_process.py)::

    .venv/bin/python tests/bench/bench_yggmail.py [--mails 20] [--size 10240] [--big 8]

One embedded meshsuite node in this process (mail service on, a TCP listener on
loopback) and two real Yggmail nodes, both peered to it (Yggmail only dials). Three
runs, printed side by side, each ``--mails`` messages of ``--size`` bytes submitted one
after the other on one SMTP connection, then one message with a ``--big`` MiB
attachment:

* **meshsuite → Yggmail**: submitted at our node; our queue runner sends them over
  QUIC streams (aioquic) to Yggmail 1; arrival = the message count in Yggmail 1's IMAP.
* **Yggmail → meshsuite**: submitted at Yggmail 1 to our ``@yggmail``; Yggmail's sender
  (quic-go) to our SMTP-over-QUIC server; arrival = our store's count.
* **Yggmail → Yggmail** (reference: Go on both ends): submitted at Yggmail 1 to Yggmail
  2; the sessions are routed through our embedded node (one hop in Python).

Latency = the submission of a message → its arrival (polled every 20 ms locally, every
100 ms over IMAP); the median and the 90th percentile. Throughput = mails / (last
arrival - first submission). Big = submission → arrival of the big message.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import NodeConfig
from core.identity import Identity
from core.node import Node
from tests.lab.lab import free_port
from tests.mail import yggmail_process
from tests.mail.helpers import PASSWORD, MailNode, wait_for
from tests.mail.yggmail_process import Yggmail

MIB = 1024 * 1024


@dataclass
class Run:
    name: str
    latencies: list[float]
    total: float
    big: float
    big_mib: int

    def row(self) -> list[str]:
        lat = sorted(self.latencies)
        p90 = lat[min(len(lat) - 1, int(len(lat) * 0.9))]
        return [
            self.name,
            f"{len(lat) / self.total:.2f}",
            f"{statistics.median(lat) * 1000:.0f}",
            f"{p90 * 1000:.0f}",
            f"{self.big:.1f}",
            f"{self.big_mib / self.big:.2f}",
        ]


def _message(frm: str, to: str, subject: str, size: int, attachment: int = 0) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, subject
    msg.set_content(("x" * 76 + "\n") * max(1, size // 77))
    if attachment:
        blob = (bytes(range(256)) * (attachment // 256 + 1))[:attachment]
        msg.add_attachment(blob, maintype="application", subtype="octet-stream")
    return msg


async def _measure(
    name: str,
    submit: Callable[[EmailMessage], None],
    count: Callable[[], Awaitable[int]],
    make: Callable[[str, int, int], EmailMessage],
    args: argparse.Namespace,
    poll: float,
) -> Run:
    base = await count()
    sent: list[float] = []
    arrived: dict[int, float] = {}

    async def watch(target: int, deadline: float) -> None:
        while len(arrived) < target and time.monotonic() < deadline:
            n = await count() - base
            now = time.monotonic()
            for k in range(1, n + 1):
                arrived.setdefault(k, now)
            await asyncio.sleep(poll)

    watcher = asyncio.create_task(watch(args.mails, time.monotonic() + 600))
    for i in range(args.mails):
        sent.append(time.monotonic())
        await asyncio.to_thread(submit, make(f"{name} {i}", args.size, 0))
    await watcher
    if len(arrived) < args.mails:
        raise SystemExit(f"{name}: only {len(arrived)} of {args.mails} arrived")
    latencies = [arrived[k + 1] - sent[k] for k in range(args.mails)]
    total = arrived[args.mails] - sent[0]
    start = time.monotonic()
    await asyncio.to_thread(submit, make(f"{name} big", 1024, args.big * MIB))
    arrived.clear()
    await watch(args.mails + 1, time.monotonic() + 900)
    if args.mails + 1 not in arrived:
        raise SystemExit(f"{name}: the big message did not arrive")
    return Run(name, latencies, total, arrived[args.mails + 1] - start, args.big)


def _submit_ours(node: MailNode, frm: str, to: str) -> Callable[[EmailMessage], None]:
    def submit(msg: EmailMessage) -> None:
        assert node.service.submission_port
        with smtplib.SMTP("127.0.0.1", node.service.submission_port, timeout=600) as smtp:
            smtp.login(str(node.node.mail_address), PASSWORD)
            smtp.send_message(msg, from_addr=frm, to_addrs=[to])

    return submit


def _submit_yggmail(y: Yggmail, to: str) -> Callable[[EmailMessage], None]:
    def submit(msg: EmailMessage) -> None:
        with smtplib.SMTP("127.0.0.1", y.smtp_port, timeout=600) as smtp:
            smtp.login(y.address, yggmail_process.PASSWORD)
            smtp.send_message(msg, from_addr=y.address, to_addrs=[to])

    return submit


async def main(args: argparse.Namespace) -> None:
    yggmail_process.yggmail_binary()
    with tempfile.TemporaryDirectory(prefix="bench-yggmail-") as tmp:
        root = Path(tmp)
        listen = f"tcp://127.0.0.1:{free_port()}"
        config = NodeConfig(data_dir=root / "ours", backend="embedded", listen=(listen,))
        (root / "ours").mkdir()
        ours = await MailNode.adopt(await Node.open(config, Identity.generate()), root / "ours")
        y1, y2 = Yggmail(root / "y1", [listen]), Yggmail(root / "y2", [listen])
        try:
            await y1.start()
            await y2.start()
            keys = {y1.key, y2.key}

            async def linked() -> bool:
                up = {p.key.hex() for p in await ours.node.peers() if p.key and p.up}
                return keys <= up

            await wait_for("both Yggmail nodes linked", linked, timeout=30)
            await asyncio.sleep(3)  # Yggmail's own link settles
            our_y = f"{ours.node.key.hex()}@yggmail"

            async def imap_count(y: Yggmail) -> int:
                return len(await asyncio.to_thread(y.fetch_all))

            async def our_count() -> int:
                return await ours.store.count("INBOX")

            runs = [
                await _measure(
                    "meshsuite -> Yggmail",
                    _submit_ours(ours, our_y, y1.address),
                    lambda: imap_count(y1),
                    lambda s, size, att: _message(our_y, y1.address, s, size, att),
                    args,
                    0.1,
                ),
                await _measure(
                    "Yggmail -> meshsuite",
                    _submit_yggmail(y1, our_y),
                    our_count,
                    lambda s, size, att: _message(y1.address, our_y, s, size, att),
                    args,
                    0.02,
                ),
                await _measure(
                    "Yggmail -> Yggmail (ref)",
                    _submit_yggmail(y1, y2.address),
                    lambda: imap_count(y2),
                    lambda s, size, att: _message(y1.address, y2.address, s, size, att),
                    args,
                    0.1,
                ),
            ]
        finally:
            await y1.stop()
            await y2.stop()
            await ours.close()
    head = ["direction", "mails/s", "median ms", "p90 ms", f"{args.big} MiB s", "MiB/s"]
    table = [head, *(r.row() for r in runs)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print(f"{args.mails} mails of {args.size} bytes, then one with {args.big} MiB attached")
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--big", type=int, default=8, help="MiB attached to the last message")
    asyncio.run(main(parser.parse_args()))
