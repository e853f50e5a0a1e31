"""``mesh mail ...``: address, password, send (for scripts) and the outbound queue.

Registered through the ``meshsuite.commands`` entry point (``register(subparsers)``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

from core import (
    KEY_FILE_NAME,
    MAIL_DOMAINS,
    YGGMAIL_DOMAIN,
    ControlClient,
    MailAddress,
    MeshError,
    NodeNotRunning,
    UsageError,
    load_config,
    load_identity,
    parse_mail_address,
    resolve_data_dir,
)
from core.cli.names import Names, or_dash
from core.cli.output import emit

from .config import MailConfig, parse_listen
from .passwords import PASSWORD_FILE_NAME, set_password
from .queue import OUTBOX_FILE_NAME, Delivery, read_queue

__all__ = ["delivery_json", "register"]

ENV_PASSWORD = "MESH_MAIL_PASSWORD"
SEND_TIMEOUT = 60.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    mail = sub.add_parser("mail", help="mail: address, password, send, queue")
    ms = mail.add_subparsers(dest="mail_cmd", required=True, metavar="COMMAND")

    a = ms.add_parser("address", help="this node's mail address and the local mail ports")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_address)

    p = ms.add_parser("passwd", help="set the password mail clients log in with")
    p.add_argument("--stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_passwd)

    s = ms.add_parser(
        "send",
        help="send a mail (body on stdin) through the running node's submission port",
    )
    s.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="KEY@mesh",
        help="recipient (KEY@mesh or KEY@yggmail)",
    )
    s.add_argument("--subject", default="", help="subject line")
    s.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"the first line of stdin is the mail password (else ${ENV_PASSWORD})",
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_send)

    q = ms.add_parser("queue", help="mail waiting for delivery: next attempt and last error")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_queue)


def _own_address(data_dir: Path) -> MailAddress:
    return MailAddress(load_identity(data_dir / KEY_FILE_NAME).public_key)


def _mail_config(data_dir: Path) -> MailConfig:
    return MailConfig.from_mapping(load_config(data_dir).service("mail"))


def _ask_node(data_dir: Path, method: str) -> Any | None:
    """The running node's answer to a control call, or None when no node runs."""
    path = data_dir / "control.sock"
    if not path.exists():
        return None

    async def call() -> Any:
        async with await ControlClient.connect(path, timeout=3) as client:
            return await client.call(method)

    try:
        return asyncio.run(call())
    except NodeNotRunning:
        return None


def _running_mail(data_dir: Path) -> dict[str, Any]:
    """The running node's mail endpoints (``mesh status``), or {} when none runs."""
    status = _ask_node(data_dir, "status")
    mail = (status or {}).get("services", {}).get("mail", {})
    return mail if isinstance(mail, dict) and "mail_address" in mail else {}


def cmd_address(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    mail = _running_mail(data_dir)
    if mail:  # the running node knows best (e.g. a daemon's own key)
        own = parse_mail_address(mail["mail_address"])
        submission, imap = mail["submission"], mail["imap"]
        mesh_port = int(mail["mesh_smtp"].rsplit(":", 1)[1])
        yggmail = str(mail.get("yggmail", "on"))
    else:
        own = _own_address(data_dir)
        config = _mail_config(data_dir)
        submission = "{}:{}".format(*config.submission)
        imap = "{}:{}".format(*config.imap)
        mesh_port = config.mesh_port
        yggmail = "on when the node runs the embedded backend"
    emit(
        {
            "mail_address": str(own),
            "yggmail_address": str(own.on(YGGMAIL_DOMAIN)),
            "yggmail": yggmail,
            "node_address": str(own.node_address),
            "smtp_submission": submission,
            "imap": imap,
            "mesh_smtp_port": mesh_port,
            "username": str(own),
            "password_set": (data_dir / PASSWORD_FILE_NAME).exists(),
            "node": "running" if mail else "not running",
        },
        as_json=args.json,
    )
    return 0


def _read_new_password(use_stdin: bool) -> str:
    if use_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise UsageError("no password on stdin")
        return line.rstrip("\r\n")
    first = getpass.getpass("New mail password: ")
    second = getpass.getpass("Repeat it: ")
    if first != second:
        raise UsageError("the two passwords differ; nothing changed")
    return first


def cmd_passwd(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    password = _read_new_password(args.stdin)
    path = set_password(data_dir, password)
    emit(
        {
            "password_file": str(path),
            "note": "a running node uses the new password from the next login on",
        },
        as_json=args.json,
    )
    return 0


def _send_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError("--password-stdin: stdin is empty")
        return line.rstrip("\r\n")
    password = os.environ.get(ENV_PASSWORD)
    if not password:
        raise UsageError(f"give the mail password with --password-stdin or ${ENV_PASSWORD}")
    return password


def cmd_send(args: argparse.Namespace) -> int:
    import smtplib  # with email.*, for this verb only: the others start without them
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    data_dir = resolve_data_dir(args.data_dir)
    mail = _running_mail(data_dir)
    if mail:  # the port the node really listens on (`mesh up --smtp`, port 0...)
        own = parse_mail_address(mail["mail_address"])
        host, port = parse_listen(mail["submission"], "smtp")
    else:
        own = _own_address(data_dir)
        host, port = _mail_config(data_dir).submission
    recipients = [str(parse_mail_address(to, MAIL_DOMAINS)) for to in args.to]
    password = _send_password(args)
    body = sys.stdin.read()
    msg = EmailMessage()
    msg["From"] = str(own)
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = args.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=f"{own.key.hex()[:16]}.mesh")
    msg.set_content(body)
    try:
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=SEND_TIMEOUT) as smtp:
            smtp.login(str(own), password)
            refused = smtp.send_message(msg, from_addr=str(own), to_addrs=recipients)
            reply = smtp.noop()
    except smtplib.SMTPAuthenticationError:
        raise MeshError("the node refused the mail password (see `mesh mail passwd`)") from None
    except smtplib.SMTPRecipientsRefused as exc:
        detail = "; ".join(f"{r}: {c} {m.decode()}" for r, (c, m) in exc.recipients.items())
        raise MeshError(f"every recipient was refused: {detail}") from None
    except smtplib.SMTPResponseException as exc:
        raise MeshError(f"the node refused the mail: {exc.smtp_code} {exc.smtp_error!r}") from None
    except (TimeoutError, OSError) as exc:
        raise MeshError(
            f"cannot reach the mail submission port {host}:{port} ({exc}); is the node "
            "running (`mesh up`)?"
        ) from None
    del reply
    result: dict[str, Any] = {
        "message_id": msg["Message-ID"],
        "queued_for": [r for r in recipients if r not in refused],
    }
    if refused or args.json:
        result["refused"] = {r: f"{c} {m.decode()}" for r, (c, m) in refused.items()}
    emit(result, as_json=args.json)
    return 0 if not refused else 1


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "delivery": d.id,
        "message": d.message,
        "message_id": d.message_id,
        "recipient": d.recipient,
        "attempts": d.attempts,
        "queued_at": d.created,
        "next_attempt": d.next_attempt,
        "last_error": d.last_error,
    }


def cmd_queue(args: argparse.Namespace) -> int:
    """From the running node (control API ``mail.queue``), else from outbox.db itself."""
    data_dir = resolve_data_dir(args.data_dir)
    rows = _ask_node(data_dir, "mail.queue")
    if rows is None:
        rows = [delivery_json(d) for d in read_queue(data_dir / OUTBOX_FILE_NAME)]
    if args.json:
        emit(rows, as_json=True)
        return 0
    if not rows:
        print("the outbound queue is empty")
        return 0
    names = _contact_names(data_dir)
    now = time.time()
    for r in rows:
        print(_queue_line(r, names, now))
    return 0


def _contact_names(data_dir: Path) -> Names:
    """Our contacts' aliases, from the running node (none without one)."""
    try:
        contacts = _ask_node(data_dir, "contacts.list")
    except MeshError:
        contacts = None
    return Names.from_contacts(contacts if isinstance(contacts, list) else [])


def _queue_line(r: dict[str, Any], names: Names, now: float) -> str:
    """One delivery of ``mesh mail queue``: the recipient by our alias where it has one
    (else its address), message id, attempts, next attempt, last error; dashes, no None."""
    recipient = r.get("recipient")
    who = names.alias(recipient) or or_dash(recipient)
    due = r.get("next_attempt")
    wait = f"next in {max(0.0, float(due) - now):.0f} s" if due is not None else "next -"
    return (
        f"{who}  {or_dash(r.get('message_id'))}  attempts={or_dash(r.get('attempts'))}  "
        f"{wait}  last error: {or_dash(r.get('last_error'))}"
    )
