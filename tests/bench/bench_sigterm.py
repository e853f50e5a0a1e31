"""SIGTERM under load: a busy node always stops, and nothing it acknowledged is lost.

    .venv/bin/python tests/bench/bench_sigterm.py [--rounds 20] [--load 2]

Two `mesh up` processes (embedded backend, loopback, their own SMTP/IMAP ports): A
stays up, B is the victim. Each round starts B peered with A, sends chat messages both
ways as fast as the control API takes them (each ``chat.send`` answer is an
acknowledgement: the message is durable) and mail both ways through each node's
submission port (a 250 after DATA is the acknowledgement), with an IMAP client in IDLE
on B's INBOX, sends B a SIGTERM at a random moment and
times how long B takes to exit (SIGKILL after :data:`GIVE_UP`, counted as a failure).
After the last round B is started once more and every acknowledged message must be
where it belongs: each chat message B accepted reaches A, each one A accepted is in
B's history, and each accepted mail is in its recipient's INBOX. (No call is up: see
the issue's closing note.) ``--load N`` runs N busy processes meanwhile (started and killed here).
Prints every stop time and the slowest; exit status 1 if a stop took more than
:data:`TARGET` s, needed a SIGKILL, or anything acknowledged was lost. Not a timed test:
tests/node/test_sigterm_under_load.py runs it for a few rounds with no time target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.control.client import ControlClient
from core.errors import MeshError
from tests.chat.procs import ChatProcess, mesh, node_key
from tests.lab.lab import free_port

PASSWORD = "bench-sigterm-pw"
TARGET = 10.0  # a stop must take no longer (the figure)
GIVE_UP = 60.0  # then it is killed and counted as hung


@dataclass
class Outcome:
    stops: list[float] = field(default_factory=list)
    killed: int = 0
    lost: list[str] = field(default_factory=list)
    sent_by_a: int = 0
    sent_by_b: int = 0
    mail_by_a: int = 0
    mail_by_b: int = 0
    late: int = 0  # mail still queued at its sender when the wait ended (not lost)


@dataclass
class Mail:
    """A node's local submission and IMAP ports, and its address."""

    key: str
    smtp: int
    imap: int
    data: Path

    @property
    def address(self) -> str:
        return f"{self.key}@mesh"

    def args(self) -> list[str]:
        return ["--smtp", f"127.0.0.1:{self.smtp}", "--imap", f"127.0.0.1:{self.imap}"]


def _mailer(frm: Mail, to: Mail, acked: set[str], stop: threading.Event) -> None:
    """Submit mail from ``frm`` to ``to`` until ``stop`` or the node goes away; the
    Message-IDs the submission server accepted (250 after DATA) in ``acked``."""
    try:
        with smtplib.SMTP("127.0.0.1", frm.smtp, timeout=30) as smtp:
            smtp.login(frm.address, PASSWORD)
            while not stop.is_set():
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = frm.address, to.address, "load"
                msg["Message-ID"] = make_msgid(domain="bench.invalid")
                msg.set_content("x" * 2000)
                smtp.send_message(msg)
                acked.add(str(msg["Message-ID"]))
                time.sleep(0.05)
    except (smtplib.SMTPException, OSError):
        pass  # the node stopped under us


def _idle(box: Mail, stop: threading.Event) -> None:
    """An IMAP client in IDLE on INBOX (as a mail client leaves it) until the node goes."""
    try:
        with socket.create_connection(("127.0.0.1", box.imap), timeout=30) as sock:
            f = sock.makefile("rwb")
            f.readline()
            f.write(
                f'a LOGIN "{box.address}" "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode()
            )
            f.flush()
            sock.settimeout(1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    if not f.readline():
                        return
    except OSError:
        pass


def _inbox(box: Mail) -> set[str]:
    """Message-IDs in ``box``'s INBOX."""
    with imaplib.IMAP4("127.0.0.1", box.imap, timeout=30) as imap:
        imap.login(box.address, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        ids: set[str] = set()
        for part in data:
            if isinstance(part, tuple):
                for line in part[1].decode(errors="replace").splitlines():
                    if line.lower().startswith("message-id:"):
                        ids.add(line.split(":", 1)[1].strip())
        return ids


async def _chatter(data: Path, to: str, acked: set[str], stop: asyncio.Event) -> None:
    """chat.send to ``to`` until ``stop`` or the node goes away; acked ids in ``acked``."""
    try:
        async with await ControlClient.connect(data / "control.sock") as client:
            i = 0
            while not stop.is_set():
                message = await client.call("chat.send", contact=to, body=f"m{i} {time.time()}")
                acked.add(str(message["id"]))
                i += 1
                await asyncio.sleep(0.01)
    except (MeshError, OSError, EOFError):
        pass  # the node stopped under us: what it answered before is what counts


async def _history(data: Path, contact: str) -> list[dict[str, object]]:
    """Every message of the conversation (paged by ``before_seq``)."""
    out: list[dict[str, object]] = []
    async with await ControlClient.connect(data / "control.sock") as client:
        before: int | None = None
        while True:
            ask: dict[str, object] = {"contact": contact, "limit": 200}
            if before is not None:
                ask["before_seq"] = before
            reply = await client.call("chat.history", **ask)
            page = list(reply["messages"])
            out += page
            if not page or not reply["more"]:
                return out
            before = min(int(str(m["seq"])) for m in page)


def _stop(proc: subprocess.Popen[bytes], out: Outcome) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(GIVE_UP)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        out.killed += 1
    took = time.monotonic() - start
    out.stops.append(took)
    return took


async def run(rounds: int, workdir: Path, rng: random.Random, verbose: bool = True) -> Outcome:
    out = Outcome()
    dir_a, dir_b = workdir / "a", workdir / "b"
    key_a, key_b = node_key(dir_a), node_key(dir_b)
    # the same ports every round, as a restarted service would have
    mail_a = Mail(key_a, free_port(), free_port(), dir_a)
    mail_b = Mail(key_b, free_port(), free_port(), dir_b)
    for data in (dir_a, dir_b):
        done = await asyncio.to_thread(mesh, data, "mail", "passwd", "--stdin", stdin=PASSWORD)
        assert done.returncode == 0, done.stderr
    a_acked: set[str] = set()
    b_acked: set[str] = set()
    a_mail: set[str] = set()
    b_mail: set[str] = set()
    listen = f"tcp://127.0.0.1:{free_port()}"
    a = await asyncio.to_thread(ChatProcess, dir_a, "--listen", listen, *mail_a.args())
    try:
        for i in range(rounds):
            b = await asyncio.to_thread(ChatProcess, dir_b, "--peer", listen, *mail_b.args())
            stop = asyncio.Event()
            halt = threading.Event()
            traffic = [
                asyncio.ensure_future(_chatter(dir_a, key_b, a_acked, stop)),
                asyncio.ensure_future(_chatter(dir_b, key_a, b_acked, stop)),
                asyncio.ensure_future(asyncio.to_thread(_mailer, mail_a, mail_b, a_mail, halt)),
                asyncio.ensure_future(asyncio.to_thread(_mailer, mail_b, mail_a, b_mail, halt)),
                asyncio.ensure_future(asyncio.to_thread(_idle, mail_b, halt)),
            ]
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            took = await asyncio.to_thread(_stop, b.proc, out)
            stop.set()
            halt.set()
            await asyncio.gather(*traffic)
            if verbose:
                print(f"round {i + 1}: B stopped in {took:.2f} s", flush=True)
        b = await asyncio.to_thread(ChatProcess, dir_b, "--peer", listen, *mail_b.args())
        try:
            await _settle(dir_a, dir_b, key_a, key_b, a_acked, b_acked, out)
            await _settle_mail(mail_a, mail_b, a_mail, b_mail, out)
        finally:
            await asyncio.to_thread(b.stop)
    finally:
        await asyncio.to_thread(a.stop)
    out.sent_by_a, out.sent_by_b = len(a_acked), len(b_acked)
    out.mail_by_a, out.mail_by_b = len(a_mail), len(b_mail)
    return out


def _queued(data: Path) -> set[str]:
    """Message-IDs still in a node's outgoing mail queue (``mesh mail queue --json``)."""
    done = mesh(data, "mail", "queue", "--json")
    if done.returncode != 0:
        return set()
    return {str(r.get("message_id")) for r in json.loads(done.stdout)}


async def _settle_mail(
    mail_a: Mail, mail_b: Mail, a_mail: set[str], b_mail: set[str], out: Outcome
) -> None:
    """Until every accepted submission is in its recipient's INBOX, bounded: after 180 s
    what is still in its sender's queue is late (the recipient's per-peer limits slow a
    flood down: "450 too many messages, retry later"), anything else is lost."""
    deadline = time.monotonic() + 180
    while True:
        at_b = await asyncio.to_thread(_inbox, mail_b)
        at_a = await asyncio.to_thread(_inbox, mail_a)
        from_a, from_b = a_mail - at_b, b_mail - at_a
        if not from_a and not from_b:
            return
        if time.monotonic() > deadline:
            queued_a = await asyncio.to_thread(_queued, mail_a.data)
            queued_b = await asyncio.to_thread(_queued, mail_b.data)
            out.late = len(from_a & queued_a) + len(from_b & queued_b)
            out.lost += [f"mail {m} from A neither at B nor queued" for m in from_a - queued_a]
            out.lost += [f"mail {m} from B neither at A nor queued" for m in from_b - queued_b]
            return
        await asyncio.sleep(2)


async def _settle(
    dir_a: Path,
    dir_b: Path,
    key_a: str,
    key_b: str,
    a_acked: set[str],
    b_acked: set[str],
    out: Outcome,
) -> None:
    """Until every acknowledged message is where it belongs (bounded: what is missing
    after 120 s is lost)."""
    deadline = time.monotonic() + 120
    while True:
        at_a = {str(m["id"]): m for m in await _history(dir_a, key_b)}
        at_b = {str(m["id"]): m for m in await _history(dir_b, key_a)}
        missing = [f"B's {i} not at A" for i in b_acked if i not in at_a]
        delivered = [i for i in a_acked if at_a.get(i, {}).get("state") in ("delivered", "read")]
        missing += [f"A's {i} delivered but not at B" for i in delivered if i not in at_b]
        missing += [f"A's {i} never delivered" for i in a_acked if i not in at_b]
        if not missing:
            return
        if time.monotonic() > deadline:
            out.lost = missing
            return
        await asyncio.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load", type=int, default=2, help="busy processes meanwhile")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument(
        "--target", type=float, default=TARGET, help="slowest stop allowed in s (0: none)"
    )
    args = parser.parse_args()
    load = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.load)]
    try:
        with TemporaryDirectory(prefix="bench-sigterm-") as tmp:
            out = asyncio.run(run(args.rounds, Path(tmp), random.Random(args.seed)))
    finally:
        for proc in load:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    stops = sorted(out.stops)
    print(f"\n{args.rounds} SIGTERMs under chat traffic, {args.load} busy processes:")
    print(f"  stop: median {stops[len(stops) // 2]:.2f} s, slowest {stops[-1]:.2f} s "
          f"(target {args.target:g} s), killed after {GIVE_UP:g} s: {out.killed}")  # fmt: skip
    print(f"  acknowledged: chat {out.sent_by_a} sent by A, {out.sent_by_b} by B; mail "
          f"{out.mail_by_a} by A, {out.mail_by_b} by B; lost: {len(out.lost)}; "
          f"mail still queued after 180 s: {out.late}")  # fmt: skip
    for line in out.lost[:20]:
        print(f"    {line}")
    slow = args.target > 0 and stops[-1] > args.target
    return 0 if not slow and not out.killed and not out.lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
