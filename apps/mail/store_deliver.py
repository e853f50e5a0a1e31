"""The mail store's group-commit delivery: many messages, one transaction, one hop.

:func:`deliver_rows` runs on the writer thread of :class:`core.AppDatabase`
inside the transaction it opened, with plain ``sqlite3`` calls: a fixed number of
statements (dedup lookup, mailboxes, bodies, entries, counters, dedup keys) whatever the
number of messages. Each message gets exactly what a delivery of its own would have got:
the mailbox's next UID, a modseq one higher than the last, its dedup key recorded (a key
seen before, or earlier in the same batch, stores nothing).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Missing", "PendingDelivery", "Prepared", "deliver_rows"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message parsed once at delivery: its bytes and the IMAP data cached with it."""

    raw: bytes
    header_size: int
    envelope: bytes
    bodystructure: bytes
    sent_date: float | None


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """One message waiting for its group commit."""

    mailbox: str  # normalised
    prepared: Prepared
    flags: frozenset[str]
    stamp: float
    tz: int
    dedup_key: str | None


@dataclass(frozen=True, slots=True)
class Missing:
    """The delivery's mailbox does not exist (the caller raises its own error)."""

    mailbox: str


Result = tuple[str, int] | Missing | None  # (mailbox, uid) | no such mailbox | duplicate


def _marks(n: int) -> str:
    return ",".join("?" * n)


def deliver_rows(conn: sqlite3.Connection, items: list[PendingDelivery]) -> list[Result]:
    """Insert ``items`` inside the caller's open transaction; one result per item."""
    keys = list({i.dedup_key for i in items if i.dedup_key is not None})
    seen: set[str] = set()
    if keys:
        sql = f"SELECT key FROM dedup WHERE key IN ({_marks(len(keys))})"
        seen = {str(r[0]) for r in conn.execute(sql, keys)}
    names = list({i.mailbox for i in items})
    sql = f"SELECT id, name, uidnext, modseq FROM mailboxes WHERE name IN ({_marks(len(names))})"
    # name -> [id, next uid, last modseq], advanced as entries are added
    boxes = {str(r[1]): [int(r[0]), int(r[2]), int(r[3])] for r in conn.execute(sql, names)}
    (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM bodies").fetchone()
    results: list[Result] = []
    bodies: list[tuple[Any, ...]] = []
    entries: list[tuple[Any, ...]] = []
    dedups: list[tuple[Any, ...]] = []
    now = time.time()
    for item in items:
        if item.dedup_key is not None and item.dedup_key in seen:
            results.append(None)
            continue
        box = boxes.get(item.mailbox)
        if box is None:
            results.append(Missing(item.mailbox))
            continue
        if item.dedup_key is not None:
            seen.add(item.dedup_key)
        p = item.prepared
        top += 1  # the id SQLite would pick (max + 1), known before the insert
        bodies.append(
            (top, p.raw, len(p.raw), p.header_size, p.envelope, p.bodystructure, p.sent_date)
        )
        uid, box[1], box[2] = box[1], box[1] + 1, box[2] + 1
        flags = " ".join(sorted(item.flags))
        entries.append((box[0], uid, top, flags, item.stamp, item.tz, box[2]))
        if item.dedup_key is not None:
            dedups.append((item.dedup_key, box[0], uid, now))
        results.append((item.mailbox, uid))
    if bodies:
        conn.executemany(
            "INSERT INTO bodies (id, raw, size, header_size, envelope, bodystructure, "
            "sent_date) VALUES (?, ?, ?, ?, ?, ?, ?)",
            bodies,
        )
        conn.executemany(
            "INSERT INTO messages (mailbox_id, uid, body_id, flags, internal_date, "
            "internal_tz, modseq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            entries,
        )
        conn.executemany(
            "UPDATE mailboxes SET uidnext = ?, modseq = ? WHERE id = ?",
            [(nxt, modseq, box_id) for box_id, nxt, modseq in boxes.values()],
        )
    if dedups:
        conn.executemany(
            "INSERT INTO dedup (key, mailbox_id, uid, created) VALUES (?, ?, ?, ?)", dedups
        )
    return results
